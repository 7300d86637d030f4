"""The benchmark's "floor": the thinnest fan-out server this stack allows.

A plain ``autobahn.twisted.websocket.WebSocketServerFactory`` with Autobahn's
default protocol options, plus a tiny HTTP trigger port.  Soketify is measured
against it in the same run (see bench/README.md).

WebSocket port (``--port``):
  * only ``/app/...`` is accepted (anything else: HTTP 404 during the handshake);
  * on open the server writes one constant, pre-framed
    ``pusher:connection_established`` frame (same size as Soketify's), so the
    load generator treats both servers alike: "open" means "first frame seen";
  * every open connection is a subscriber of the one channel ``bench``;
  * any text message from a client (the load generator's ``pusher:subscribe``)
    is answered with one constant, pre-framed
    ``pusher_internal:subscription_succeeded`` frame; nothing is parsed.

HTTP port (``--http-port``):
  * ``GET /ready`` -> 200 (readiness, like Soketify's);
  * ``POST /pub`` with the same JSON body the REST API takes
    (``{"name": ..., "channels": [...], "data": "..."}``): the event frame
    ``{"event":name,"channel":"bench","data":data}`` is built and framed once
    and its bytes are written straight to every subscriber's transport.
    Answers ``{}`` after the writes are queued (as Soketify's REST does).

Nothing else: no timers, no logging, no per-connection state beyond Autobahn's.
"""

import argparse
import json

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import reactor
from twisted.web import resource, server


def _frame(obj):
    """One unmasked, final, text WebSocket frame carrying compact JSON."""
    payload = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    n = len(payload)
    if n <= 125:
        head = bytes((0x81, n))
    elif n <= 0xFFFF:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + payload


ESTABLISHED = _frame({
    "event": "pusher:connection_established",
    "data": json.dumps({"socket_id": "123456.7890123", "activity_timeout": 120},
                       separators=(",", ":")),
})
SUBSCRIBED = _frame({
    "event": "pusher_internal:subscription_succeeded", "channel": "bench", "data": "{}",
})


class FloorProtocol(WebSocketServerProtocol):
    def onConnect(self, request):
        if not request.path.startswith("/app/"):
            raise ConnectionDeny(404)
        return None

    def onOpen(self):
        self.factory.subscribers.add(self)
        self.transport.write(ESTABLISHED)

    def onMessage(self, payload, isBinary):
        self.transport.write(SUBSCRIBED)

    def onClose(self, wasClean, code, reason):
        self.factory.subscribers.discard(self)


class FloorFactory(WebSocketServerFactory):
    protocol = FloorProtocol

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.subscribers = set()

    def publish(self, name, data):
        payload = json.dumps({"event": name, "channel": "bench", "data": data},
                             separators=(",", ":")).encode("utf-8")
        frame = self.prepareMessage(payload).payloadHybi
        for proto in self.subscribers:
            proto.transport.write(frame)
        return len(self.subscribers)


class Ready(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"ok"


class Pub(resource.Resource):
    isLeaf = True

    def __init__(self, factory):
        super().__init__()
        self.factory = factory

    def render_POST(self, request):
        body = json.loads(request.content.read())
        self.factory.publish(body["name"], body["data"])
        request.setHeader(b"content-type", b"application/json")
        return b"{}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True, help="WebSocket port")
    ap.add_argument("--http-port", type=int, required=True, help="trigger/readiness port")
    args = ap.parse_args()

    factory = FloorFactory(f"ws://{args.host}:{args.port}")
    root = resource.Resource()
    root.putChild(b"ready", Ready())
    root.putChild(b"pub", Pub(factory))
    site = server.Site(root)
    site.log = lambda request: None  # no access log

    reactor.listenTCP(args.port, factory, interface=args.host)
    reactor.listenTCP(args.http_port, site, interface=args.host)
    reactor.run()


if __name__ == "__main__":
    main()
