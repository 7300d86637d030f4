"""treq delivery against real local HTTP(S) servers: headers and body as sent, certificates checked."""

import importlib.util
import os
import tempfile

from twisted.internet import reactor, ssl
from twisted.trial import unittest
from twisted.web import resource, server

from soketify.webhooks import treq_post

HERE = os.path.dirname(os.path.abspath(__file__))


def _make_cert(key_path, cert_path):
    spec = importlib.util.spec_from_file_location("make_cert", os.path.join(HERE, "interop", "make_cert.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(key_path, cert_path)


class Recorder(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.received = []

    def render_POST(self, request):
        self.received.append((dict(request.requestHeaders.getAllRawHeaders()), request.content.read()))
        request.setResponseCode(204)
        return b""


class TreqDeliveryTests(unittest.TestCase):
    def listen(self, recorder, tls=False):
        site = server.Site(recorder)
        if tls:
            directory = tempfile.mkdtemp()
            key, cert = os.path.join(directory, "k.pem"), os.path.join(directory, "c.pem")
            _make_cert(key, cert)
            with open(key) as k, open(cert) as c:
                options = ssl.PrivateCertificate.loadPEM(k.read() + c.read()).options()
            port = reactor.listenSSL(0, site, options, interface="127.0.0.1")
        else:
            port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def test_post_sends_body_and_headers_and_answers_the_status(self):
        """The receiver gets the exact body and headers; the caller gets the status code."""
        recorder = Recorder()
        port = self.listen(recorder)
        post = treq_post(reactor)
        status = await post(f"http://127.0.0.1:{port}/hook", b'{"time_ms":1,"events":[]}',
                            {"Content-Type": "application/json", "X-Pusher-Key": "k"}, 5)
        self.assertEqual(status, 204)
        headers, body = recorder.received[0]
        self.assertEqual(body, b'{"time_ms":1,"events":[]}')
        self.assertEqual(headers[b"Content-Type"], [b"application/json"])
        self.assertEqual(headers[b"X-Pusher-Key"], [b"k"])
        await _close_pool(post)

    async def test_untrusted_certificate_is_a_failed_delivery(self):
        """An https target with a certificate nobody vouches for is not posted to."""
        recorder = Recorder()
        port = self.listen(recorder, tls=True)
        post = treq_post(reactor)
        with self.assertRaises(Exception):
            await post(f"https://127.0.0.1:{port}/hook", b"{}", {}, 5)
        self.assertEqual(recorder.received, [])
        await _close_pool(post)


async def _close_pool(post):
    await post.pool.closeCachedConnections()
