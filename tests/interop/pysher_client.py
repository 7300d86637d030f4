"""Run the pysher client (deepstreamIO/pysher) against the daemon for the interop tests.

argv[1] is a JSON object: {"key", "secret", "host", "port", "channels": [...], "events": [...],
"user_data": {...} | null}. pysher signs private-/presence- subscriptions itself with the secret.
Prints one JSON object per line on stdout:

    {"type": "connected", "socket_id": "1.2"}
    {"type": "subscribed", "channel": "private-x"}
    {"type": "subscription_error", "channel": "private-x", "data": ...}
    {"type": "event", "channel": "private-x", "event": "e", "data": "<data as received>"}
    {"type": "error", "data": ...}
    {"type": "pong"}                      (answer to the ping pysher sends on open, data "")

and runs until stdin is closed, then disconnects and exits.
"""

import json
import logging
import sys
import threading

import pysher

_lock = threading.Lock()


def emit(obj):
    with _lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def main():
    config = json.loads(sys.argv[1])
    client = pysher.Pusher(
        config["key"],
        secret=config.get("secret") or "",
        custom_host=config["host"],
        port=int(config["port"]),
        secure=False,
        user_data=config.get("user_data"),
        log_level=logging.WARNING,
    )

    def bind_channel(channel, name):
        channel.bind("pusher_internal:subscription_succeeded",
                     lambda data: emit({"type": "subscribed", "channel": name}))
        channel.bind("pusher:subscription_error",
                     lambda data: emit({"type": "subscription_error", "channel": name, "data": data}))
        for event in config.get("events", []):
            channel.bind(event, lambda data, event=event: emit(
                {"type": "event", "channel": name, "event": event, "data": data}))

    def on_connected(data):
        # pysher's own handler (bound first) has stored the socket_id by now.
        emit({"type": "connected", "socket_id": client.connection.socket_id})
        for name in config.get("channels", []):
            bind_channel(client.subscribe(name), name)

    client.connection.bind("pusher:connection_established", on_connected)
    client.connection.bind("pusher:error", lambda data: emit({"type": "error", "data": data}))
    client.connection.bind("pusher:pong", lambda data: emit({"type": "pong"}))
    client.connect()
    sys.stdin.read()  # the test closes stdin to stop us
    # What pysher's disconnect() does, without its waits: websocket-client waits up to 3 s for the
    # server's close reply (which pysher's reader thread often consumes first) and the reader thread
    # may sit in select() long after. Send the close frame, then exit (pysher's threads are daemons).
    connection = client.connection
    connection.needs_reconnect = False
    connection.disconnect_called = True
    if connection.socket:
        connection.socket.close(timeout=0.2)


if __name__ == "__main__":
    main()
