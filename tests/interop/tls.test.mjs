// TLS listeners (`ssl:` endpoints): wss for pusher-js and https for both server SDKs on one port.
// The certificate is self-signed and made per run; pusher-js offers no CA option, so this test
// process (and only it: node --test runs each file in its own process) trusts any certificate.
process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { Daemon, appConfig, connectPusherJs, pyOk, subscribePusherJs, uniqueName } from './helpers.mjs';

describe('TLS endpoint', () => {
  let daemon;
  const clients = [];

  before(async () => {
    daemon = await Daemon.start({ apps: [appConfig()], tls: true });
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    if (daemon) await daemon.stop();
  });

  it('pusher-js over wss receives events triggered over https by the Node and Python SDKs', async () => {
    const client = await connectPusherJs(daemon, { forceTLS: true, wssPort: daemon.tlsPort });
    clients.push(client);
    const name = uniqueName('tls');
    const { inbox } = await subscribePusherJs(client, name);

    const sdk = daemon.sdk(undefined, { useTLS: true, port: String(daemon.tlsPort) });
    await sdk.trigger(name, 'from-node', { via: 'node' });
    assert.deepEqual((await inbox.waitFor((e) => e.event === 'from-node')).data, { via: 'node' });

    await daemon.py([{ op: 'trigger', channels: [name], event: 'from-python', data: { via: 'python' } }],
      undefined, { tls: true }).then((results) => assert.equal(results[0].ok, true, JSON.stringify(results)));
    assert.deepEqual((await inbox.waitFor((e) => e.event === 'from-python')).data, { via: 'python' });
  });

  it('answers https clients that offer ALPN (browsers, curl) instead of failing the handshake', async () => {
    const res = await fetch(`https://127.0.0.1:${daemon.tlsPort}/ready`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { ready: true });
  });
});
