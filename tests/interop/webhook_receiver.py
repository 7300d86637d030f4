"""A real HTTP webhook receiver for the interop tests (twisted.web).

Every POST (any path except /control) is checked with the official Python server SDK (pusher 3.3):
``pusher.Pusher(app_id, key, secret).validate_webhook(key, signature, body)``, and reported on stdout
as one JSON line:

    {"type": "webhook", "seq": 1, "path": "/all", "status": 200, "received_ms": ...,
     "headers": {"content-type": ["application/json"], ...},   # lower-case names, every value
     "body": "<raw body>", "valid_python": true, "python_error": null, "events": [...]}

``status`` is what this receiver answered: 200, the failure status while failures are armed, or
null for a request it never answers.

Control (answered before anything else):
    POST /control  {"fail": {"/path": N}, "status": 500}   answer the next N requests to /path with
                   ``status`` ("*" matches every path); answers {"ok": true}
                   {"hang": {"/path": N}}   never answer the next N requests to /path
    GET  /received every report so far, as a JSON array

Start-up prints {"type": "listening", "port": N} once the port is bound.

Usage: webhook_receiver.py --port N --app-id ID --key KEY --secret SECRET [--fail PATH=N ...]
"""

import argparse
import json
import sys
import time

import pusher
from twisted.internet import endpoints, reactor
from twisted.web import resource, server


def report(record):
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class Receiver(resource.Resource):
    isLeaf = True

    def __init__(self, sdk, fail):
        super().__init__()
        self.sdk = sdk
        self.fail = dict(fail)  # path (or "*") -> remaining failures
        self.fail_status = 500
        self.hang = {}  # path -> requests left unanswered
        self.received = []

    def render_GET(self, request):
        if request.path == b"/received":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(self.received).encode()
        request.setResponseCode(404)
        return b"not found\n"

    def render_POST(self, request):
        body = request.content.read()
        path = request.path.decode("utf-8", "replace")
        if path == "/control":
            command = json.loads(body)
            self.fail.update(command.get("fail", {}))
            self.hang.update(command.get("hang", {}))
            self.fail_status = command.get("status", self.fail_status)
            request.setHeader(b"content-type", b"application/json")
            return b'{"ok": true}'

        headers = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers.setdefault(name.decode("latin-1").lower(), []).extend(
                v.decode("latin-1") for v in values)
        text = body.decode("utf-8", "replace")
        valid, error, events = False, None, None
        try:
            data = self.sdk.validate_webhook(
                key=(headers.get("x-pusher-key") or [None])[0],
                signature=(headers.get("x-pusher-signature") or [None])[0],
                body=text)
            valid = data is not None
            if valid:
                events = data.get("events")
            else:
                error = "validate_webhook returned None"
        except Exception as e:  # the SDK raises on missing headers
            error = "%s: %s" % (type(e).__name__, e)
        if events is None:
            try:
                events = json.loads(text).get("events")
            except Exception:
                events = None

        status = 200
        hang = self.hang.get(path, 0) > 0
        if hang:
            self.hang[path] -= 1
            status = None
        for key in (path, "*"):
            if not hang and self.fail.get(key, 0) > 0:
                self.fail[key] -= 1
                status = self.fail_status
                break
        record = {
            "type": "webhook", "seq": len(self.received) + 1, "path": path, "method": "POST",
            "status": status, "received_ms": time.time() * 1000, "headers": headers, "body": text,
            "valid_python": valid, "python_error": error, "events": events,
        }
        self.received.append(record)
        report(record)
        if hang:
            return server.NOT_DONE_YET  # the client gives up (its timeout) and closes
        request.setResponseCode(status)
        return b"ok\n" if status < 300 else b"failing on purpose\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--fail", action="append", default=[], metavar="PATH=N",
                        help="answer the first N requests to PATH with 500")
    args = parser.parse_args()
    fail = {}
    for item in args.fail:
        path, _, count = item.rpartition("=")
        fail[path] = int(count)
    sdk = pusher.Pusher(app_id=args.app_id, key=args.key, secret=args.secret)
    site = server.Site(Receiver(sdk, fail))
    site.noisy = False
    endpoint = endpoints.TCP4ServerEndpoint(reactor, args.port, interface="127.0.0.1")

    def listening(port):
        report({"type": "listening", "port": port.getHost().port})

    def failed(failure):
        report({"type": "error", "message": failure.getErrorMessage()})
        reactor.stop()

    endpoint.listen(site).addCallbacks(listening, failed)
    reactor.run()


if __name__ == "__main__":
    main()
