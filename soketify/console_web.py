"""The debug console over HTTP, at /console on the server's own port: the page and its files, and
the JSON API the page (and scripts) use. Everything the page needs is in the package.

    GET  /console                      the page
    GET  /console/static/<file>        its script and style
    POST /console/api/login            {"password"}: a session cookie and {"csrf"}
    POST /console/api/logout
    GET  /console/api/session          {"signed_in", "csrf", "node", "apps", "types"}
    GET  /console/api/stream?app=ID    entries as newline-delimited JSON, for as long as it is read
    GET  /console/api/channels?app=ID  occupied channels with subscription (and user) counts
    GET  /console/api/channel?app=ID&channel=NAME   members with their user_info, cache and TTL
    GET  /console/api/user?app=ID&user_id=ID        that user's connections in the cluster
    GET  /console/api/stats?app=ID     connections and messages per second, the last minutes
    POST /console/api/trigger          {"app", "channels", "name", "data"}: as POST /events
    POST /console/api/terminate        {"app", "user_id"}: as terminate_connections

Reading needs a session cookie or ``Authorization: Bearer <api_token>``; actions need a session
and its ``X-CSRF-Token``. Without a password (the development default) every request is signed in.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from klein import Klein
from twisted.internet.interfaces import IPushProducer
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException
from zope.interface import implementer

from soketify import protocol
from soketify.console_auth import Sessions, password_matches, token_matches
from soketify.cluster.interfaces import ClusterUnavailable
from soketify.console_feed import TYPES, Viewer
from soketify.rest import ApiError, json_answer

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "console_static")
COOKIE = b"soketify_console"
# The files /console/static/ serves (the page itself only at /console, with its headers).
STATIC_FILES = {b"console.js": b"text/javascript; charset=utf-8",
                b"console.css": b"text/css; charset=utf-8"}
SECURITY_HEADERS = {
    b"Content-Security-Policy": b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
}
MAX_STREAMS = 32
# A stream whose reader has not read for this long is closed (its entries were being skipped).
STALLED_SECONDS = 60.0
# Password checks (scrypt, on threads) under way at once; more are answered 429.
MAX_CHECKS = 4


def _addressed_directly(request) -> bool:
    """Asked for by IP address or as localhost. A page of another site whose name was rebound to
    this server's address (DNS rebinding) asks by that name: without a password, it is refused."""
    host = (request.getHeader(b"host") or b"").decode("latin-1")
    if not host:
        return True  # no browser leaves it out
    try:
        name = urlsplit("//" + host).hostname or ""
    except ValueError:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _no_store(request) -> None:
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")


def _json(request, status: int, body) -> bytes:
    _no_store(request)
    return json_answer(request, status, json.dumps(body, separators=(",", ":"), default=str).encode())


@implementer(IPushProducer)
class _StreamProducer:
    """Pauses a viewer while its reader does not read (the transport's buffer is full)."""

    def __init__(self, viewer: Viewer):
        self._viewer = viewer

    def pauseProducing(self):
        self._viewer.pause()

    def resumeProducing(self):
        self._viewer.resume()

    def stopProducing(self):
        self._viewer.pause()


class _Stream(Resource):
    isLeaf = True

    def __init__(self, console: "Console", app_ids: list[str]):
        super().__init__()
        self._console = console
        self._app_ids = app_ids

    def render_GET(self, request):
        return self._console.open_stream(request, self._app_ids)

    def render_HEAD(self, request):  # a stream nobody reads would keep entries being built
        request.setResponseCode(405)
        request.setHeader(b"Allow", b"GET")
        return b""


class Console:
    app = Klein()

    def __init__(self, settings, hub, api, feed, stats, clock, development: bool,
                 session_key: bytes | None = None):
        """``settings``: ConsoleConfig; ``api``: the RestApi (triggers take its path);
        ``development``: no config file, so no password is asked; ``session_key``: the host's
        (shared by a supervisor's workers, so that a session is valid on each)."""
        self.settings = settings
        self.hub = hub
        self.api = api
        self.feed = feed
        self.stats = stats
        self.clock = clock
        self.open_to_all = development and not (settings.password or settings.password_hash)
        self.sessions = Sessions(clock, session_key, settings.password_hash or settings.password)
        self.streams: dict = {}  # open stream requests -> their viewers
        self._checking = 0  # password checks under way
        # Runs a password check off the reactor's thread (tests on a fake reactor run it inline).
        self.run_check = deferToThread

    def resource(self):
        return self.app.resource()

    def reconfigure(self, settings) -> None:
        """A reload's [console]: password, token and apps apply to the next request; a changed
        password or token signs everyone out, and with changed apps too the open streams end
        (each was opened for the apps shown then)."""
        old, self.settings = self.settings, settings
        if settings.password or settings.password_hash:
            self.open_to_all = False
        if (old.password, old.password_hash) != (settings.password, settings.password_hash):
            self.sessions.rekey(settings.password_hash or settings.password)
        if (old.password, old.password_hash, old.api_token, old.apps) != (
                settings.password, settings.password_hash, settings.api_token, settings.apps):
            for request in list(self.streams):
                request.loseConnection()

    # -- who is asking -------------------------------------------------------------------------

    def _session(self, request) -> str | None:
        # Whatever bytes a client sends: a value that is not ours is simply no session.
        cookie = request.getCookie(COOKIE)
        return cookie.decode("utf-8", "replace") if cookie else None

    def _open_to(self, request) -> bool:
        """No password is asked (the development default) of this request."""
        return self.open_to_all and _addressed_directly(request)

    def _check_direct_when_open(self, request) -> None:
        if self.open_to_all and not _addressed_directly(request):
            raise ApiError(403, "Without a password the console answers only requests for an IP "
                               "address or localhost")

    def _may_read(self, request) -> bool:
        return (self._open_to(request) or self.sessions.csrf_of(self._session(request)) is not None
                or token_matches(request.getHeader(b"authorization"), self.settings.api_token))

    def _check_read(self, request) -> None:
        if not self._may_read(request):
            raise ApiError(401, "Sign in, or send Authorization: Bearer <console.api_token>")

    @staticmethod
    def _check_same_origin(request) -> None:
        """A POST of the page itself: JSON (which another site cannot send without a preflight),
        and from this server's own origin when the browser says where it comes from."""
        if (request.getHeader(b"content-type") or b"").split(b";")[0].strip() != b"application/json":
            raise ApiError(415, "Send Content-Type: application/json")
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host") or b""
        if origin is not None and origin.split(b"://", 1)[-1] != host:
            raise ApiError(403, "Cross-origin requests are refused")
        if request.getHeader(b"sec-fetch-site") not in (None, b"same-origin", b"none"):
            raise ApiError(403, "Cross-site requests are refused")

    def _check_action(self, request) -> None:
        """A signed-in browser's action: its session and the CSRF token of that session."""
        self._check_same_origin(request)
        if self.open_to_all:
            self._check_direct_when_open(request)
            return
        csrf = self.sessions.csrf_of(self._session(request))
        given = (request.getHeader(b"x-csrf-token") or b"").decode("utf-8", "replace")
        if csrf is None:
            raise ApiError(401, "Sign in first")
        if not hmac.compare_digest(csrf.encode(), given.encode()):
            raise ApiError(403, "Missing or wrong X-CSRF-Token")

    def _app(self, request, app_id=None):
        if app_id is None:
            app_id = (request.args.get(b"app") or [b""])[0].decode("utf-8", "replace")
        app = self.hub.apps.by_id(app_id)
        if app is None or not self._shown(app.id):
            raise ApiError(404, f"No app {app_id!r} here")
        return app

    def _shown(self, app_id: str) -> bool:
        return not self.settings.apps or app_id in self.settings.apps

    @staticmethod
    def _body(request) -> dict:
        if getattr(request, "body_too_large", False):
            raise ApiError(413, "Request body is too large")
        try:
            body = json.loads(request.content.read() or b"{}")
        except ValueError:
            raise ApiError(400, "The body must be a JSON object")
        if not isinstance(body, dict):
            raise ApiError(400, "The body must be a JSON object")
        return body

    # -- the page ------------------------------------------------------------------------------

    @staticmethod
    def _serve(request, name: str, content_type: bytes) -> bytes:
        for header, value in SECURITY_HEADERS.items():
            request.setHeader(header, value)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"Content-Type", content_type)
        with open(os.path.join(STATIC, name), "rb") as f:
            return f.read()

    @app.route("/console", methods=["GET"])
    def page(self, request):
        return self._serve(request, "index.html", b"text/html; charset=utf-8")

    @app.route("/console/static/<string:name>", methods=["GET"])
    def static(self, request, name):
        content_type = STATIC_FILES.get(name.encode())
        if content_type is None:
            raise ApiError(404, "No such file")
        return self._serve(request, name, content_type)

    # -- sessions ------------------------------------------------------------------------------

    @app.route("/console/api/login", methods=["POST"])
    async def login(self, request):
        self._check_same_origin(request)
        self._check_direct_when_open(request)
        address = str(getattr(request.getClientAddress(), "host", request.getClientAddress()))
        wait = self.sessions.wait_before_trying(address)
        if wait > 0:
            request.setHeader(b"Retry-After", b"%d" % (int(wait) + 1))
            raise ApiError(429, f"Too many wrong passwords; try again in {wait:.0f} s")
        given = self._body(request).get("password")
        if not self.open_to_all:
            if self._checking >= MAX_CHECKS:
                raise ApiError(429, "Too many sign-ins at once; try again in a second")
            self._checking += 1
            try:
                # scrypt takes tens of milliseconds: not on the reactor's thread.
                right = isinstance(given, str) and await self.run_check(
                    password_matches, given, self.settings.password, self.settings.password_hash)
            finally:
                self._checking -= 1
            if not right:
                self.sessions.failed(address)
                raise ApiError(401, "Wrong password")
        self.sessions.succeeded(address)
        session, csrf = self.sessions.open()
        cookie = SimpleCookie()
        cookie["soketify_console"] = session
        morsel = cookie["soketify_console"]
        morsel["path"], morsel["httponly"], morsel["samesite"] = "/console", True, "Strict"
        if request.isSecure():
            morsel["secure"] = True
        request.setHeader(b"Set-Cookie", morsel.OutputString().encode())
        return _json(request, 200, {"csrf": csrf})

    @app.route("/console/api/logout", methods=["POST"])
    def logout(self, request):
        self._check_action(request)
        self.sessions.close(self._session(request))
        request.setHeader(b"Set-Cookie", b"soketify_console=; Path=/console; Max-Age=0; HttpOnly; "
                          b"SameSite=Strict")
        return _json(request, 200, {"ok": True})

    @app.route("/console/api/session", methods=["GET"])
    def session(self, request):
        self._check_direct_when_open(request)
        csrf = "" if self.open_to_all else self.sessions.csrf_of(self._session(request))
        signed_in = csrf is not None
        body = {"signed_in": signed_in, "password_needed": not self.open_to_all}
        if signed_in:
            body["node"] = self.feed.node
            body["csrf"] = csrf
            # Never a secret: ids and keys only.
            body["apps"] = [{"id": app.id, "key": app.key} for app in self.hub.apps
                            if self._shown(app.id)]
            body["types"] = list(TYPES) + ["skipped"]
        return _json(request, 200, body)

    # -- the stream ----------------------------------------------------------------------------

    @app.route("/console/api/stream", methods=["GET"])
    def stream(self, request):
        self._check_read(request)
        app_ids = [self._app(request).id] if request.args.get(b"app") else [
            app.id for app in self.hub.apps if self._shown(app.id)]
        # A resource: Klein leaves a request it renders open while it answers NOT_DONE_YET.
        return _Stream(self, app_ids)

    def open_stream(self, request, app_ids: list[str]):
        if len(self.streams) >= MAX_STREAMS:
            request.setResponseCode(503)
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps({"error": f"{MAX_STREAMS} console streams are open already"}).encode()
        request.setHeader(b"Content-Type", b"application/x-ndjson")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")

        def write(entries, skipped):
            lines = [json.dumps(entry, separators=(",", ":"), default=str) for entry in entries]
            if skipped:
                # Of every app the stream shows: app_id null.
                lines.append(json.dumps({"time": round(self.clock.seconds(), 3),
                                         "node": self.feed.node, "app_id": None, "type": "skipped",
                                         "count": skipped}))
            request.write(("\n".join(lines) + "\n").encode())
        viewer = Viewer(self.clock, write, app_ids, stalled=(STALLED_SECONDS, request.loseConnection))
        self.feed.attach(viewer)
        self.streams[request] = viewer
        request.registerProducer(_StreamProducer(viewer), True)
        # A first line at once: the reader knows it is connected (browsers buffer nothing then).
        request.write(json.dumps({"time": round(self.clock.seconds(), 3), "node": self.feed.node,
                                  "app_id": None, "type": "stream_opened",
                                  "apps": app_ids}).encode() + b"\n")

        def gone(_):
            self.streams.pop(request, None)
            self.feed.detach(viewer)
            viewer.close()
            if request.channel is not None:
                request.unregisterProducer()
        request.notifyFinish().addBoth(gone)
        return NOT_DONE_YET

    # -- the inspector -------------------------------------------------------------------------

    @app.route("/console/api/channels", methods=["GET"])
    async def channels(self, request):
        self._check_read(request)
        app = self._app(request)
        occupied = await self.hub.occupied_channels(app.id, "")
        return _json(request, 200, {"channels": [
            {"name": name, "subscription_count": stats.subscription_count,
             "user_count": stats.user_count} for name, stats in sorted(occupied.items())]})

    @app.route("/console/api/channel", methods=["GET"])
    async def channel(self, request):
        self._check_read(request)
        app = self._app(request)
        name = (request.args.get(b"channel") or [b""])[0].decode("utf-8", "replace")
        body = {"name": name}
        if protocol.is_presence(name):
            members = await self.hub.channel_members(app.id, name)
            body["members"] = [{"id": user_id, "user_info": info}
                               for user_id, info in sorted(members.items())]
        if protocol.is_cache(name):
            cached = await self.hub.cached_event(app.id, name)
            body["cache"] = None if cached is None else {
                "event": cached.name, "data": cached.data, "ttl": cached.ttl}
        return _json(request, 200, body)

    @app.route("/console/api/user", methods=["GET"])
    async def user(self, request):
        self._check_read(request)
        app = self._app(request)
        user_id = (request.args.get(b"user_id") or [b""])[0].decode("utf-8", "replace")
        signed_in = await self.hub.user_sockets(app.id, user_id)
        # Details of the connections on this node; the others by socket id (its node's number).
        here = {c.socket_id: c for c in self.hub.users.connections_of(app.id, user_id)}
        connections = []
        for socket_id in sorted(set(signed_in) | set(here)):
            c = here.get(socket_id)
            connections.append({"socket_id": socket_id, "on_this_node": False} if c is None else {
                "socket_id": socket_id, "on_this_node": True, "address": c.remote_address,
                "channels": sorted(c.channels), "user_info": c.user_info})
        return _json(request, 200, {"user_id": user_id, "node": self.feed.node,
                                    "connections": connections})

    @app.route("/console/api/stats", methods=["GET"])
    def stats_(self, request):
        self._check_read(request)
        app = self._app(request)
        return _json(request, 200, self.stats.series(app.id))

    # -- actions -------------------------------------------------------------------------------

    @app.route("/console/api/trigger", methods=["POST"])
    def trigger(self, request):
        self._check_action(request)
        body = self._body(request)
        app = self._app(request, str(body.get("app", "")))
        event = {key: body[key] for key in ("channels", "channel", "name", "data", "socket_id")
                 if key in body}
        try:
            self.api.publish_from_console(app, event)
        except (ApiError, ClusterUnavailable):
            # Answered as POST /events would be, and, refused, an entry with its reason.
            _no_store(request)
            return json_answer(request, *self.api.error_answer(Failure(), app.id))
        return _json(request, 200, {"ok": True})

    @app.route("/console/api/terminate", methods=["POST"])
    async def terminate(self, request):
        self._check_action(request)
        body = self._body(request)
        app = self._app(request, str(body.get("app", "")))
        user_id = body.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise ApiError(400, "user_id must be a non-empty string")
        await self.hub.terminate_user(app.id, user_id)
        return _json(request, 200, {"ok": True})

    # -- errors --------------------------------------------------------------------------------

    @app.handle_errors(Exception)
    def failed(self, request, failure):
        """Answered as the REST API answers its errors (ApiError, ClusterUnavailable, anything
        else logged and 500); the console's own refusals are not entries of its log."""
        if isinstance(failure.value, HTTPException):
            return _json(request, failure.value.code, {"error": failure.value.name})
        _no_store(request)
        return json_answer(request, *self.api.error_answer(failure))
