"""Drive the official Python server SDK (pusher 3.3) for the interop tests.

Reads one JSON document from stdin:

    {"conn": {"app_id": "...", "key": "...", "secret": "...", "host": "127.0.0.1", "port": 1234,
              "ssl": false, "ca_file": null},
     "ops": [{"op": "trigger", "channels": ["a"], "event": "e", "data": {...}, "socket_id": null},
             {"op": "trigger_batch", "batch": [{"channel": "a", "name": "e", "data": "..."}]},
             {"op": "channels_info", "prefix_filter": "p", "attributes": []},
             {"op": "channel_info", "channel": "a", "attributes": ["subscription_count"]},
             {"op": "users_info", "channel": "presence-a"},
             {"op": "send_to_user", "user_id": "1", "event": "e", "data": {...}},
             {"op": "terminate_user_connections", "user_id": "1"}]}

"conn" may also carry "encryption_master_key_base64" (for private-encrypted- channels).

runs the operations in order with one pusher.Pusher client and prints a JSON array with
one entry per operation: {"ok": true, "result": <SDK return value>} or
{"ok": false, "error": "<exception class>", "message": "...", "status": <HTTP status or null>}.
"""

import json
import re
import sys

import pusher
from pusher import errors
from pusher.requests import RequestsBackend

STATUS_BY_ERROR = {
    errors.PusherBadRequest: 400,
    errors.PusherBadAuth: 401,
    errors.PusherForbidden: 403,
}


def run(client, op):
    kind = op["op"]
    if kind == "trigger":
        return client.trigger(op["channels"], op["event"], op["data"], socket_id=op.get("socket_id"))
    if kind == "trigger_batch":
        return client.trigger_batch(op["batch"])
    if kind == "channels_info":
        return client.channels_info(prefix_filter=op.get("prefix_filter"), attributes=op.get("attributes", []))
    if kind == "channel_info":
        return client.channel_info(op["channel"], attributes=op.get("attributes", []))
    if kind == "users_info":
        return client.users_info(op["channel"])
    if kind == "send_to_user":
        return client.send_to_user(op["user_id"], op["event"], op["data"])
    if kind == "terminate_user_connections":
        return client.terminate_user_connections(op["user_id"])
    raise ValueError("unknown op %r" % (kind,))


def status_of(exc):
    for cls, status in STATUS_BY_ERROR.items():
        if isinstance(exc, cls):
            return status
    if isinstance(exc, errors.PusherBadStatus):
        match = re.match(r"(\d{3}):", str(exc))
        if match:
            return int(match.group(1))
    return None


class TrustedCABackend(RequestsBackend):
    """The SDK pins its own CA bundle for https; a self-hosted server may use a private CA."""

    ca_file = None

    def __init__(self, client, **options):
        super().__init__(client, **options)
        if self.ca_file:
            self.options["verify"] = self.ca_file


def main():
    request = json.load(sys.stdin)
    conn = request["conn"]
    TrustedCABackend.ca_file = conn.get("ca_file")
    client = pusher.Pusher(
        backend=TrustedCABackend,
        app_id=conn["app_id"],
        key=conn["key"],
        secret=conn["secret"],
        host=conn.get("host", "127.0.0.1"),
        port=int(conn["port"]),
        ssl=bool(conn.get("ssl", False)),
        timeout=conn.get("timeout", 5),
        encryption_master_key_base64=conn.get("encryption_master_key_base64"),
    )
    results = []
    for op in request["ops"]:
        try:
            results.append({"ok": True, "result": run(client, op)})
        except Exception as exc:  # report every failure to the test, which decides
            results.append(
                {"ok": False, "error": type(exc).__name__, "message": str(exc), "status": status_of(exc)}
            )
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
