"""The AMP commands between a supervisor and its worker processes (the ``amp`` engine).

AMP limits each value to 65,535 bytes, while an event may carry 10 KB of data escaped into JSON and a
presence snapshot 100 members of 1 KB each: ``Big`` values are split over as many keys as they need
(``name``, ``name.1``, ``name.2`` ...), so any size the limits allow passes.
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.protocols import amp

log = Logger()

CHUNK = amp.MAX_VALUE_LENGTH


class Big(amp.Argument):
    """Bytes of any length, split over several AMP keys."""

    def fromBox(self, name, strings, objects, proto):
        first = strings.pop(name, None)
        key = name.decode()
        if first is None:
            if not self.optional:
                raise KeyError(key)
            objects[key] = None
            return
        parts = [first]
        index = 1
        while (part := strings.pop(b"%s.%d" % (name, index), None)) is not None:
            parts.append(part)
            index += 1
        objects[key] = self.decode(b"".join(parts) if index > 1 else first)

    def toBox(self, name, strings, objects, proto):
        value = objects.get(name.decode())
        if value is None:
            if not self.optional:
                raise KeyError(name.decode())
            return
        data = self.encode(value)
        strings[name] = data[:CHUNK]
        for index, start in enumerate(range(CHUNK, len(data), CHUNK), 1):
            strings[b"%s.%d" % (name, index)] = data[start:start + CHUNK]

    def encode(self, value) -> bytes:
        return value

    def decode(self, data: bytes):
        return data


class BigText(Big):
    def encode(self, value: str) -> bytes:
        return value.encode()

    def decode(self, data: bytes) -> str:
        return data.decode()


class BigJson(Big):
    """Any JSON value (members, stats, id lists)."""

    def encode(self, value) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def decode(self, data: bytes):
        return json.loads(data)


# Channel names, user ids, event names and socket ids come from clients, and the limits that bound
# them are configurable: every text travels as BigText, whatever its length.
def _text() -> amp.Argument:
    return BigText()


def _optional_text() -> amp.Argument:
    return BigText(optional=True)


# -- worker -> supervisor ----------------------------------------------------------------------

class Hello(amp.Command):
    """A worker's link is up: which node number (the first part of its socket ids) it is, and the
    config the supervisor loaded (every worker serves that one, even if the file changed since):
    {"document": the parsed TOML, "source": its path, "development": no file at all}."""
    arguments = [(b"index", amp.Integer())]
    response = [(b"node_number", amp.Integer()), (b"serving", amp.Boolean()),
                (b"config", BigJson(optional=True))]


class Listening(amp.Command):
    """The worker has opened every listen endpoint: it counts as up."""
    arguments = []
    requiresAnswer = False


class Join(amp.Command):
    arguments = [(b"app_id", _text()), (b"channel", _text()), (b"socket_id", _text()),
                 (b"member", BigJson(optional=True))]
    # refused_limit set: MemberLimitReached; otherwise a Joined.
    response = [(b"new", amp.Boolean()), (b"count", amp.Integer()),
                (b"members", BigJson(optional=True)), (b"cached", BigText(optional=True)),
                (b"refused_limit", amp.Integer(optional=True))]


class Leave(amp.Command):
    # The state knows which member a socket joined as: no user id needed.
    arguments = [(b"app_id", _text()), (b"channel", _text()), (b"socket_id", _text())]
    response = [(b"count", amp.Integer(optional=True))]


class SignIn(amp.Command):
    arguments = [(b"app_id", _text()), (b"socket_id", _text()), (b"user_id", _text()),
                 (b"watchlist", BigJson())]
    response = [(b"online", BigJson())]


class SignOut(amp.Command):
    arguments = [(b"app_id", _text()), (b"socket_id", _text()), (b"user_id", _text())]
    requiresAnswer = False


class Publish(amp.Command):
    arguments = [(b"app_id", _text()), (b"channel", _text()), (b"text", Big()),
                 (b"except_socket_id", _optional_text()),
                 (b"cache_name", _optional_text()), (b"cache_data", BigText(optional=True))]
    requiresAnswer = False


class Connections(amp.Command):
    """The worker's open connections of an app with max_connections, after each change."""
    arguments = [(b"app_id", _text()), (b"count", amp.Integer())]
    requiresAnswer = False


class ChannelStatsQuery(amp.Command):
    arguments = [(b"app_id", _text()), (b"names", BigJson())]
    response = [(b"stats", BigJson())]  # {name: [subscription_count, user_count or null]}


class OccupiedQuery(amp.Command):
    arguments = [(b"app_id", _text()), (b"prefix", _text())]
    response = [(b"stats", BigJson())]


class MembersQuery(amp.Command):
    arguments = [(b"app_id", _text()), (b"channel", _text())]
    response = [(b"members", BigJson())]  # user_id -> user_info


class CachedQuery(amp.Command):
    arguments = [(b"app_id", _text()), (b"channel", _text())]
    response = [(b"event", BigJson(optional=True))]  # [text, name, data, ttl]


class UserSocketsQuery(amp.Command):
    arguments = [(b"app_id", _text()), (b"user_id", _text())]
    response = [(b"socket_ids", BigJson())]


class TerminateUser(amp.Command):
    arguments = [(b"app_id", _text()), (b"user_id", _text())]
    response = [(b"count", amp.Integer())]


class EmitWebhook(amp.Command):
    arguments = [(b"app_id", _text()), (b"event", BigJson())]
    requiresAnswer = False


class WebhooksStored(amp.Command):
    """Answered once every webhook event the worker sent before is in the supervisor's outbox."""
    arguments = []
    response = []


class Sync(amp.Command):
    """A round trip: answered after everything the worker sent before, and everything sent to it."""
    arguments = []
    response = []


class HostMetrics(amp.Command):
    """The Prometheus text of the whole host: every worker's samples added up."""
    arguments = []
    response = [(b"text", BigText())]


# -- supervisor -> worker ----------------------------------------------------------------------

class Deliver(amp.Command):
    arguments = [(b"app_id", _text()), (b"channel", _text()), (b"payload", Big()),
                 (b"except_socket_id", _optional_text())]
    requiresAnswer = False


class ConsoleWatching(amp.Command):
    """This worker has debug-console viewers (sent each second while it has): the others send it
    their console entries for a few seconds more."""
    arguments = []
    requiresAnswer = False


class ConsoleWatched(amp.Command):
    """Supervisor -> worker: another worker has console viewers."""
    arguments = []
    requiresAnswer = False


class ConsoleEntries(amp.Command):
    """Console entries of one reactor turn, as JSON lines: worker -> supervisor -> the watching
    workers."""
    arguments = [(b"lines", BigText())]
    requiresAnswer = False


class Reload(amp.Command):
    """The config file was read again (SIGHUP to the supervisor): serve this config from now on,
    in the form Hello answers it. Answered once the worker applied it."""
    arguments = [(b"config", BigJson())]
    response = []


class CountChanged(amp.Command):
    arguments = [(b"app_id", _text()), (b"channel", _text()), (b"count", amp.Integer())]
    requiresAnswer = False


class UserOnline(amp.Command):
    arguments = [(b"app_id", _text()), (b"user_id", _text()), (b"online", amp.Boolean())]
    requiresAnswer = False


class TerminateHere(amp.Command):
    arguments = [(b"app_id", _text()), (b"user_id", _text())]
    response = [(b"count", amp.Integer())]


class Elsewhere(amp.Command):
    """Connections of an app with max_connections open on the other workers."""
    arguments = [(b"app_id", _text()), (b"count", amp.Integer())]
    requiresAnswer = False


class Serving(amp.Command):
    """Whether the host serves: every worker up and no stop under way (drives /ready)."""
    arguments = [(b"serving", amp.Boolean())]
    requiresAnswer = False


class WorkerMetrics(amp.Command):
    arguments = []
    response = [(b"text", BigText())]


class HandlerFailed(amp.RemoteAmpError):
    """A command's handler raised: logged where it happened, answered as an error, link kept."""

    def __init__(self):
        super().__init__(b"HANDLER_FAILED", "the other side failed to handle the command")


class QuietAMP(amp.AMP):
    """AMP for the links of one host. A handler that fails answers with an error and the link stays
    up (plain AMP drops the link, which would stop a worker and every client on it); no info lines
    at each connection and loss (the supervisor logs what matters)."""

    def makeConnection(self, transport):
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason):
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None

    def locateResponder(self, name):
        responder = super().locateResponder(name)
        if responder is None:
            return None

        def failed(failure):
            if not failure.check(amp.RemoteAmpError):
                log.failure("Handling {command} failed", failure, command=name.decode())
                raise HandlerFailed()
            return failure
        return lambda box: responder(box).addErrback(failed)

    def unhandledError(self, failure):
        if not failure.check(amp.RemoteAmpError):  # those were logged where they happened
            log.failure("Error on a link between supervisor and worker", failure)


def one_way_box(command: type[amp.Command], **values) -> bytes:
    """The serialized box of a command that takes no answer, built once to be written to many
    workers (a Deliver fanned out to N workers costs one encoding, not N)."""
    box = command.makeArguments(values, None)
    box[b"_command"] = command.commandName
    return box.serialize()
