"""The REST API (``/apps/{id}/...``, PROTOCOL.md section 7): signature check, validation, hub calls.

Every answer is JSON: ``{}`` or the requested information on success, ``{"error": "..."}`` otherwise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import unquote, unquote_to_bytes

from klein import Klein
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException

from soketify import protocol, signing
from soketify.cluster.interfaces import ClusterUnavailable
from soketify.config import AppConfig, LimitsConfig
from soketify.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

log = Logger()

EVENT_INFO = frozenset(("user_count", "subscription_count"))
CHANNEL_INFO = frozenset(("user_count", "subscription_count", "cache"))
CHANNELS_INFO = frozenset(("user_count", "subscription_count"))
CLUSTER_UNAVAILABLE = "The server cannot reach its cluster; try again"


class ApiError(Exception):
    def __init__(self, status: int, message: str, counted: bool = False):
        """``counted``: already reported as a refusal (over a limit)."""
        super().__init__(message)
        self.status = status
        self.message = message
        self.counted = counted


def _dumps(body) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


# twisted.web's reason phrases, and those it lacks.
REASON_PHRASES = {**RESPONSES, 429: b"Too Many Requests"}


def json_answer(request, status: int, encoded: bytes) -> bytes:
    """Set the status and headers of a JSON answer on a twisted.web request; returns the body."""
    request.setResponseCode(status, REASON_PHRASES.get(status))
    request.setHeader(b"Content-Type", b"application/json")
    # Klein writes every answer after rendering, so without this twisted.web sends it chunked.
    request.setHeader(b"Content-Length", b"%d" % len(encoded))
    return encoded


def _json(request, status: int, body) -> bytes:
    return json_answer(request, status, _dumps(body))


def _request_parts(request) -> tuple[bytes, bytes, bytes, bytes, bool]:
    """Method, path, query, body and whether the body was over the limit, of a twisted.web request."""
    too_large = getattr(request, "body_too_large", False)
    body = b"" if too_large or request.content is None else request.content.read()
    return request.method, request.path, request.uri.partition(b"?")[2], body, too_large


# An answer apart from any request object: (HTTP status, JSON body).
Answer = tuple[int, bytes]
NOTHING_TO_SAY: Answer = (200, b"{}")


def _info_attributes(raw: object, allowed: frozenset, what: str) -> list[str]:
    if raw is None or raw == "":
        return []
    if not isinstance(raw, str):
        raise ApiError(400, f"{what}: info must be a comma-separated string")
    attributes = [a.strip() for a in raw.split(",") if a.strip()]
    for attribute in attributes:
        if attribute not in allowed:
            raise ApiError(400, f"{what}: unknown info attribute {attribute!r}")
    return attributes


def _query_component(raw: bytes) -> str:
    try:
        if b"%" not in raw and b"+" not in raw:  # most are: keys, timestamps, hex signatures
            return raw.decode("utf-8")
        return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "The query string is not valid UTF-8 once percent-decoded")


def parse_query(raw: bytes) -> dict[str, str]:
    """The query as the SDKs encode it: percent-decoded once, UTF-8, ``+`` for a space, each name
    once. A repeat is refused: the signed string holds one value per name, so which one would count?"""
    params: dict[str, str] = {}
    seen: set[str] = set()
    for field in raw.split(b"&"):
        if not field:
            continue
        name, _, value = field.partition(b"=")
        name = _query_component(name)
        if name.lower() in seen:  # lowercased, as names are in the signed string
            raise ApiError(400, f"Query parameter {name!r} is repeated")
        seen.add(name.lower())
        params[name] = _query_component(value)
    return params


def _json_object(body: bytes) -> dict:
    try:
        document = protocol.loads(body)
    except ValueError as problem:
        raise ApiError(400, f"Request body must be JSON: {problem}")
    if not isinstance(document, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return document


@dataclass(frozen=True)
class ApiRequest:
    """One authenticated REST request: its query parsed once, the only form handlers read."""

    app: AppConfig
    method: str
    path: str  # as signed: as sent, or percent-decoded for escaped channel names
    params: Mapping[str, str]
    body: bytes

    @property
    def filter_by_prefix(self) -> str:
        return self.params.get("filter_by_prefix", "")

    def info(self, allowed: frozenset) -> list[str]:
        """The ``info`` attributes asked for, each one of the endpoint's ``allowed`` set."""
        return _info_attributes(self.params.get("info"), allowed, "info")

    def json_object(self) -> dict:
        return _json_object(self.body)


# The REST calls that come thousands of times a second, routed before Klein: (app id, endpoint).
# A path with an escaped app id goes to Klein, which decodes it.
PUBLISH_PATH = re.compile(rb"/apps/([^/%?]+)/(events|batch_events)\Z")
APP_PATH = re.compile(rb"/apps/([^/%?]+)/")


def _answer_later(answer: Deferred, request) -> None:
    """Write the answer once it is there, unless the client went away meanwhile."""
    gone = []
    request.notifyFinish().addErrback(gone.append)

    def finish(answer: Answer) -> None:
        if not gone:
            request.write(json_answer(request, *answer))
            request.finish()
    answer.addCallback(finish)


def _undecodable(request) -> str | None:
    """What of the request's path or Host is not UTF-8 once percent-decoded, if anything."""
    try:
        b"/".join(request.postpath).decode("utf-8")
    except UnicodeDecodeError:
        return "The path is not valid UTF-8 once percent-decoded"
    try:
        request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return "The Host header is not valid UTF-8"
    return None


class DirectTriggers(Resource):
    """The API's root resource: POST /apps/{id}/events and batch_events straight to their handler,
    everything else to Klein. Werkzeug routing and Klein's Deferred chain cost about a fifth of a
    trigger."""

    isLeaf = True

    def __init__(self, api: "RestApi", klein_resource, console=None):
        super().__init__()
        self._api = api
        self._klein = klein_resource
        self._console = console  # the debug console's resource, when enabled

    def render(self, request):
        problem = _undecodable(request)
        if problem is not None:  # Klein would fail on it with a traceback and an HTML page
            return _json(request, 400, {"error": problem})
        if request.method == b"POST":
            match = PUBLISH_PATH.match(request.path)
            if match is not None:
                answer = self._api.publish_request(request, match.group(2), match.group(1).decode())
                if isinstance(answer, Deferred):  # `info` asked for: answered once the cluster has
                    _answer_later(answer, request)
                    return NOT_DONE_YET
                return json_answer(request, *answer)
        if self._console is not None and (request.path == b"/console"
                                          or request.path.startswith(b"/console/")):
            return self._console.render(request)
        return self._klein.render(request)


class RestApi:
    """Routes of the REST API and the status endpoints, as a Klein app."""

    app = Klein()

    def __init__(self, hub, clock, limits: LimitsConfig, unready_reason, metrics=None):
        """``unready_reason()`` says why the node does not serve now, or None when it does."""
        self.hub = hub
        self.clock = clock
        self.limits = limits
        self._unready_reason = unready_reason
        self._metrics = metrics
        # (app id, limit) -> [start of the current one-second window, calls counted in it]
        self._rate_windows: dict[tuple[str, str], list] = {}

    def resource(self, console=None):
        """The root resource; ``console``: the debug console's, served under /console."""
        return DirectTriggers(self, self.app.resource(), console)

    def publish(self, endpoint: bytes, app_id: str, method: bytes, path: bytes, query: bytes,
                body: bytes, body_too_large: bool = False) -> Answer | Deferred:
        """POST /apps/{app_id}/events (``endpoint`` b"events") or batch_events, from the parts of
        the request, without Klein's routing and Deferred chain: the answer, or a Deferred of it
        when `info` is asked for. Every error is an answer, as the Klein routes' error handlers give."""
        try:
            api = self._authenticate_parts(app_id, method, path, query, body, body_too_large)
            answer = (self._publish_event if endpoint == b"events" else self._publish_batch)(api)
        except Exception:
            return self.error_answer(Failure(), app_id)
        if isinstance(answer, Deferred):
            return answer.addErrback(self.error_answer)
        return answer

    def publish_request(self, request, endpoint: bytes, app_id: str) -> Answer | Deferred:
        """``publish`` for a twisted.web request."""
        return self.publish(endpoint, app_id, *_request_parts(request))

    def publish_from_console(self, app: AppConfig, event: object) -> None:
        """An event the debug console sends: checked and published as POST /events would."""
        if not app.enabled:
            raise ApiError(403, "App is disabled")
        self._publish_one(app, event)

    def count_http(self, app_id: str, received: int, sent: int) -> None:
        """One REST call of the app (if it is one of ours): bytes received and sent."""
        traffic = self.hub.traffic.get(app_id)
        if traffic is not None:
            traffic.http_call(received, sent)

    def count_request(self, request) -> None:
        """``count_http`` for a request twisted.web answered (its body and URI, and the body of
        the answer: headers are not counted on this path)."""
        match = APP_PATH.match(request.path)
        if match is not None:
            received = len(request.uri) + int(request.getHeader(b"content-length") or 0)
            self.count_http(match.group(1).decode("utf-8", "replace"), received,
                            request.sentLength)

    def error_answer(self, failure, app_id: str | None = None) -> Answer:
        error = failure.value
        if isinstance(error, ApiError):
            if app_id is not None and not error.counted and self.hub.feed.watching:
                self.hub.refused(app_id, None, error.message, code=error.status)
            return error.status, _dumps({"error": error.message})
        if isinstance(error, ClusterUnavailable):
            return 503, _dumps({"error": CLUSTER_UNAVAILABLE})
        log.failure("Request failed", failure)
        return 500, _dumps({"error": "Internal server error"})

    # -- status --------------------------------------------------------------------------------

    @app.route("/", methods=["GET"])
    def root(self, request):
        return _json(request, 200, {"ok": True})

    @app.route("/health", methods=["GET"])
    def health(self, request):
        return _json(request, 200, {"ok": True})

    @app.route("/ready", methods=["GET"])
    def ready(self, request):
        reason = self._unready_reason()
        if reason is None:
            return _json(request, 200, {"ready": True})
        return _json(request, 503, {"ready": False, "error": reason})

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request):
        if self._metrics is None:
            raise ApiError(404, "Metrics are not enabled")
        def text(body: bytes) -> bytes:
            request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE.encode())
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return body
        if self._metrics.host_metrics is None:
            return text(self._metrics.render())

        def unavailable(failure):
            log.warn("Host-wide metrics unavailable: {why}", why=failure.getErrorMessage())
            return _json(request, 503, {"error": "Metrics of the other workers are unavailable"})
        # One of several workers: the answer covers every worker of the host.
        return self._metrics.host_metrics().addCallbacks(text, unavailable)

    @app.handle_errors(HTTPException)
    def http_error(self, request, failure):
        error = failure.value
        return _json(request, error.code, {"error": error.description or error.name})

    @app.handle_errors(Exception)
    def api_error(self, request, failure):
        """ApiError, ClusterUnavailable and anything unexpected (logged, 500)."""
        match = APP_PATH.match(request.path)
        app_id = match.group(1).decode("utf-8", "replace") if match is not None else None
        return json_answer(request, *self.error_answer(failure, app_id))

    # -- authentication ------------------------------------------------------------------------

    def _authenticate(self, request, app_id: str | None) -> ApiRequest:
        """``_authenticate_parts`` for a twisted.web request."""
        return self._authenticate_parts(app_id, *_request_parts(request))

    def _authenticate_parts(self, app_id: str | None, method: bytes, path: bytes, query: bytes,
                            body: bytes, body_too_large: bool) -> ApiRequest:
        """Parse the query once and check the signature. Without an app id in the path (the Python
        SDK's terminate_connections), the app is the one owning auth_key."""
        params = parse_query(query)
        app = self._find_app(app_id, params)
        if body_too_large:
            raise ApiError(413, "Request body is too large")
        self._check_auth_params(app, params, body)
        method = method.decode()
        path = self._signed_path(app, method, path.decode("utf-8", "replace"), params)
        if not app.enabled:
            raise ApiError(403, "App is disabled")
        if method in ("GET", "HEAD"):
            self._within_rate(app, "read_requests_per_second", 1, "read requests")
        return ApiRequest(app, method, path, params, body)

    def _over(self, app: AppConfig, limit: str, status: int, message: str) -> ApiError:
        """The error for a call refused over one of the app's limits, counted in /metrics."""
        self.hub.refused(app.id, limit, message, code=status)
        return ApiError(status, message, counted=True)

    def _within_rate(self, app: AppConfig, limit: str, count: int, what: str) -> None:
        """Count ``count`` calls against the app's per-second ``limit`` on this node (fixed
        one-second windows), or refuse them all with 429 if they do not fit."""
        per_second = getattr(app.limits, "max_" + limit)
        if not per_second:
            return
        now = self.clock.seconds()
        window = self._rate_windows.get((app.id, limit))
        if window is None or not 0 <= now - window[0] < 1.0:  # (a clock set back starts anew)
            window = self._rate_windows[(app.id, limit)] = [now, 0]
        if window[1] + count > per_second:
            raise self._over(app, limit, 429,
                             f"Over this app's limit of {per_second} {what} per second; slow down")
        window[1] += count

    def _find_app(self, app_id: str | None, params: Mapping[str, str]) -> AppConfig:
        if app_id is None:
            app = self.hub.apps.by_key(params.get("auth_key", ""))
            if app is None:
                raise ApiError(401, "auth_key does not belong to any app")
            return app
        app = self.hub.apps.by_id(app_id)
        if app is None:
            raise ApiError(404, f"Unknown app {app_id!r}")
        return app

    def _check_auth_params(self, app: AppConfig, params: Mapping[str, str], body: bytes) -> None:
        if params.get("auth_key") != app.key:
            raise ApiError(401, "auth_key is missing or does not belong to this app")
        raw_timestamp = params.get("auth_timestamp", "")
        try:
            # More digits than any time: a number that large would overflow the comparison below.
            timestamp = int(raw_timestamp) if len(raw_timestamp) <= 20 else None
        except ValueError:
            timestamp = None
        if timestamp is None:
            raise ApiError(401, "auth_timestamp is missing or not a number")
        skew = self.limits.max_timestamp_skew
        if abs(self.clock.seconds() - timestamp) > skew:
            raise ApiError(401, f"auth_timestamp is more than {skew} seconds from server time")
        if params.get("auth_version") != "1.0":
            raise ApiError(401, "auth_version must be 1.0")
        if body or "body_md5" in params:
            if params.get("body_md5") != signing.body_md5(body):
                raise ApiError(401, "body_md5 does not match the request body")

    @staticmethod
    def _signed_path(app: AppConfig, method: str, raw_path: str, params: Mapping[str, str]) -> str:
        """The path the signature covers. Clients sign the path as they send it; accept the
        decoded form too for escaped names."""
        signature = params.get("auth_signature")
        candidates = [raw_path, unquote(raw_path)] if "%" in raw_path else [raw_path]
        for path in candidates:
            if signing.verify_rest_signature(app.secret, method, path, params, signature):
                return path
        raise ApiError(401, "Invalid signature: check the app secret and the signed string")

    def _require_cluster(self) -> None:
        """A node cut off from its cluster must not accept events it cannot deliver everywhere."""
        if not self.hub.cluster.ready:
            raise ApiError(503, CLUSTER_UNAVAILABLE)

    # -- events --------------------------------------------------------------------------------

    def _event(self, event: object, where: str, batch: bool, app: AppConfig) -> dict:
        """Validate one event; returns name, data, channels, socket_id and info attributes."""
        if not isinstance(event, dict):
            raise ApiError(400, f"{where}: an event must be a JSON object")
        limits = app.limits
        name = event.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, f"{where}: name must be a non-empty string")
        if len(name) > limits.max_event_name_length:
            raise ApiError(400, f"{where}: name is longer than {limits.max_event_name_length} characters")
        data = event.get("data")
        if not isinstance(data, str):
            raise ApiError(400, f"{where}: data must be a string")
        if len(data.encode("utf-8")) > limits.max_event_data_bytes:
            raise self._over(app, "event_payload", 413,
                             f"{where}: data is larger than {limits.max_event_data_bytes} bytes")
        if "channels" in event and not batch:
            channels = event["channels"]
            if not isinstance(channels, list) or not channels:
                raise ApiError(400, f"{where}: channels must be a non-empty list")
        elif "channel" in event:
            channels = [event["channel"]]
        else:
            raise ApiError(400, f"{where}: channel{'' if batch else 's'} is required")
        if len(channels) > limits.max_channels_per_event:
            raise self._over(app, "event_channels_at_once", 400,
                             f"{where}: more than {limits.max_channels_per_event} channels")
        for channel in channels:
            self._check_channel_name(app, channel, f"{where}: ")
        if len(channels) > 1 and any(protocol.is_encrypted(c) for c in channels):
            raise ApiError(400, f"{where}: an encrypted channel cannot be triggered with other channels")
        socket_id = event.get("socket_id")
        if socket_id is not None and (not isinstance(socket_id, str)
                                      or not protocol.SOCKET_ID.match(socket_id)):
            raise ApiError(400, f"{where}: socket_id must look like 123.456")
        info = _info_attributes(event.get("info"), EVENT_INFO, where)
        return {"name": name, "data": data, "channels": list(dict.fromkeys(channels)),
                "socket_id": socket_id, "info": info}

    def _event_info(self, app_id: str, event: dict):
        """Deferred of the `info` attributes of each channel of the event."""
        return self.hub.channel_stats(app_id, event["channels"]).addCallback(
            lambda stats: {name: self._stats_body(name, stats[name], event["info"])
                           for name in event["channels"]})

    @staticmethod
    def _stats_body(name: str, stats, attributes) -> dict:
        body = {}
        if "user_count" in attributes and protocol.is_presence(name):
            body["user_count"] = stats.user_count or 0
        if "subscription_count" in attributes:
            body["subscription_count"] = stats.subscription_count
        return body

    # Reached through Klein only for an escaped app id; DirectTriggers takes every other.
    @app.route("/apps/<string:app_id>/events", methods=["POST"])
    def events(self, request, app_id):
        return self._publish_through_klein(request, b"events", app_id)

    @app.route("/apps/<string:app_id>/batch_events", methods=["POST"])
    def batch_events(self, request, app_id):
        return self._publish_through_klein(request, b"batch_events", app_id)

    def _publish_through_klein(self, request, endpoint: bytes, app_id: str):
        answer = self.publish_request(request, endpoint, app_id)
        if isinstance(answer, Deferred):
            return answer.addCallback(lambda answer: json_answer(request, *answer))
        return json_answer(request, *answer)

    def _check_channel_name(self, app: AppConfig, channel, where: str = "") -> None:
        problem = protocol.channel_name_problem(channel, app.limits.max_channel_name_length)
        if problem is None:
            return
        message = f"{where}{problem}: {channel!r}" if where else problem
        if isinstance(channel, str) and len(channel) > app.limits.max_channel_name_length:
            raise self._over(app, "channel_name_length", 400, message)
        raise ApiError(400, message)

    def _publish_one(self, app: AppConfig, body) -> dict:
        """One event of POST /events: checked, counted against the app's rate, published."""
        event = self._event(body, "event", False, app)
        self._within_rate(app, "backend_events_per_second", 1, "events")
        self._require_cluster()
        self.hub.publish(app.id, event["channels"], event["name"], event["data"],
                         event["socket_id"])
        return event

    def _publish_event(self, api: ApiRequest) -> Answer | Deferred:
        # Not a coroutine: a trigger without `info` (nearly all of them) is answered at once.
        event = self._publish_one(api.app, api.json_object())
        if not event["info"]:
            return NOTHING_TO_SAY
        return self._event_info(api.app.id, event).addCallback(
            lambda info: (200, _dumps({"channels": info})))

    def _publish_batch(self, api: ApiRequest) -> Answer | Deferred:
        batch = api.json_object().get("batch")
        if not isinstance(batch, list) or not batch:
            raise ApiError(400, "batch must be a non-empty list of events")
        if len(batch) > api.app.limits.max_batch_events:
            raise self._over(api.app, "event_batch_size", 400,
                             f"batch has more than {api.app.limits.max_batch_events} events")
        # Validate everything first: a batch is published whole or not at all.
        events = [self._event(e, f"batch[{i}]", True, api.app) for i, e in enumerate(batch)]
        self._within_rate(api.app, "backend_events_per_second", len(events), "events")
        self._require_cluster()
        for event in events:
            self.hub.publish(api.app.id, event["channels"], event["name"], event["data"],
                             event["socket_id"])
        if not any(event["info"] for event in events):
            return NOTHING_TO_SAY
        return ensureDeferred(self._batch_info(api.app.id, events))

    async def _batch_info(self, app_id: str, events) -> Answer:
        answers = []
        for event in events:
            info = await self._event_info(app_id, event) if event["info"] else {}
            answers.append(info.get(event["channels"][0], {}))
        return 200, _dumps({"batch": answers})

    # -- channel queries -----------------------------------------------------------------------

    @app.route("/apps/<string:app_id>/channels", methods=["GET"])
    async def channels(self, request, app_id):
        api = self._authenticate(request, app_id)
        prefix = api.filter_by_prefix
        info = api.info(CHANNELS_INFO)
        if "user_count" in info and not prefix.startswith("presence-"):
            raise ApiError(400, "info=user_count needs filter_by_prefix starting with presence-")
        occupied = await self.hub.occupied_channels(api.app.id, prefix)
        return _json(request, 200, {"channels": {
            name: self._stats_body(name, stats, info) for name, stats in occupied.items()}})

    @app.route("/apps/<string:app_id>/channels/<string:channel>", methods=["GET"])
    async def channel(self, request, app_id, channel):
        api = self._authenticate(request, app_id)
        self._check_channel_name(api.app, channel)
        info = api.info(CHANNEL_INFO)
        if "user_count" in info and not protocol.is_presence(channel):
            raise ApiError(400, "info=user_count is only available for presence channels")
        stats = (await self.hub.channel_stats(api.app.id, [channel]))[channel]
        body = {"occupied": stats.occupied}
        body.update(self._stats_body(channel, stats, info))
        if "cache" in info:
            cached = await self.hub.cached_event(api.app.id, channel)
            body["cache"] = None if cached is None else {
                "event": cached.name, "data": cached.data, "ttl": cached.ttl}
        return _json(request, 200, body)

    @app.route("/apps/<string:app_id>/channels/<string:channel>/users", methods=["GET"])
    async def channel_users(self, request, app_id, channel):
        api = self._authenticate(request, app_id)
        if not protocol.is_presence(channel):
            raise ApiError(400, "Users can only be listed on presence channels")
        self._check_channel_name(api.app, channel)
        members = await self.hub.channel_members(api.app.id, channel)
        return _json(request, 200, {"users": [{"id": user_id} for user_id in members]})

    # -- users ---------------------------------------------------------------------------------

    @app.route("/apps/<string:app_id>/users/<string:user_id>/terminate_connections",
               methods=["POST"])
    async def terminate_connections(self, request, app_id, user_id):
        api = self._authenticate(request, app_id)
        await self.hub.terminate_user(api.app.id, user_id)
        return _json(request, 200, {})

    @app.route("/users/<string:user_id>/terminate_connections", methods=["POST"])
    async def terminate_connections_by_key(self, request, user_id):
        """The path the Python SDK 3.3 posts to: no /apps/{id} prefix, the app comes from auth_key."""
        return await self.terminate_connections(request, None, user_id)
