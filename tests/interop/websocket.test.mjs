// The WebSocket protocol spoken by hand with raw `ws` clients: handshake, error codes, ping,
// robustness against bad frames, subscribe/unsubscribe. PROTOCOL.md sections 1-3 and 5.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { APP, Daemon, RawClient, appConfig, pollUntil, uniqueName, withTimeout } from './helpers.mjs';

const DISABLED = Object.freeze({ id: '100003', key: 'disabled-key', secret: 'disabled-secret' });
const LIMITED = Object.freeze({ id: '100004', key: 'limited-key', secret: 'limited-secret' });
const MAX_MESSAGE_SIZE = 65536;

describe('WebSocket protocol with raw clients', () => {
  let daemon;
  let node;
  const raws = [];

  before(async () => {
    daemon = await Daemon.start({
      server: { max_message_size: MAX_MESSAGE_SIZE },
      apps: [
        appConfig(),
        appConfig({ ...DISABLED, enabled: false }),
        appConfig({ ...LIMITED, max_connections: 1 }),
      ],
    });
    node = daemon.sdk();
  });

  after(async () => {
    for (const r of raws) r.terminate();
    if (daemon) await daemon.stop();
  });

  function open(url, label) {
    const r = RawClient.open(url, { label });
    raws.push(r);
    return r;
  }

  async function connect(options = {}) {
    const r = await RawClient.connect(daemon, options);
    raws.push(r);
    return r;
  }

  /** The first frame must be pusher:error with `code`, then the server closes with the same code. */
  async function expectRefused(url, code) {
    const r = open(url, `refused client (${url})`);
    const close = await r.waitClose();
    const first = r.messages[0];
    assert.ok(first, `no frame before close ${JSON.stringify(close)}; expected pusher:error ${code}`);
    assert.equal(first.event, 'pusher:error', `first frame was ${first.raw}`);
    assert.equal(first.data.code, code, `pusher:error frame ${first.raw}`);
    assert.equal(typeof first.data.message, 'string');
    assert.equal(close.code, code, `close code ${close.code} (${close.reason})`);
    assert.ok(!r.messages.some((m) => m.event === 'pusher:connection_established'));
  }

  it('the first frame is pusher:connection_established with JSON-string data: socket_id and the configured activity_timeout', async () => {
    const r = open(daemon.wsUrl(), 'handshake client');
    const first = await r.inbox.waitFor(() => true, { what: 'first frame' });
    assert.equal(first.event, 'pusher:connection_established', first.raw);
    assert.equal(typeof first.parsed.data, 'string', 'data must be a JSON string (double encoded)');
    assert.match(first.data.socket_id, /^\d+\.\d+$/);
    assert.equal(first.data.activity_timeout, 120);
  });

  it('protocol versions 5 and 6 are accepted like 7', async () => {
    for (const version of [5, 6]) {
      const r = open(daemon.wsUrl(APP.key, `protocol=${version}&client=js&version=8.6.0`), `protocol ${version}`);
      await r.waitEvent('pusher:connection_established');
    }
  });

  it('an unknown app key gets pusher:error 4001 and close 4001', async () => {
    await expectRefused(daemon.wsUrl('no-such-key'), 4001);
  });

  it('a disabled app gets pusher:error 4003 and close 4003', async () => {
    await expectRefused(daemon.wsUrl(DISABLED.key), 4003);
  });

  it('a connection over the app max_connections gets pusher:error 4004 and close 4004; a freed slot is reusable', async () => {
    const first = await connect({ key: LIMITED.key });
    await expectRefused(daemon.wsUrl(LIMITED.key), 4004);
    first.ws.close(1000);
    await first.waitClose();
    // The server learns about the close asynchronously: retry until the slot is free again.
    await pollUntil(
      async () => {
        const r = open(daemon.wsUrl(LIMITED.key), 'reuse attempt');
        const outcome = await Promise.race([
          r.waitEvent('pusher:connection_established').then(() => 'established', () => 'closed'),
          r.closed.then(() => 'closed'),
        ]);
        return outcome === 'established';
      },
      { timeout: 5000, interval: 100, what: 'a connection to the limited app after the first one closed' },
    );
  });

  it('an unknown path under /app/ gets pusher:error 4005 and close 4005', async () => {
    await expectRefused(`ws://127.0.0.1:${daemon.port}/app/${APP.key}/extra?protocol=7&client=js&version=8.6.0`, 4005);
  });

  it('a WebSocket upgrade on a path outside /app/ is refused (HTTP 404 or close 4005)', async () => {
    const r = open(`ws://127.0.0.1:${daemon.port}/nowhere/${APP.key}?protocol=7`, 'outside /app/');
    const close = await r.waitClose();
    if (r.httpResponse) {
      assert.equal(r.httpResponse.status, 404);
    } else {
      assert.equal(close.code, 4005, `close ${close.code} ${close.reason}`);
    }
    assert.ok(!r.messages.some((m) => m.event === 'pusher:connection_established'));
  });

  it('a missing protocol parameter gets pusher:error 4008 and close 4008', async () => {
    await expectRefused(daemon.wsUrl(APP.key, 'client=js&version=8.6.0'), 4008);
  });

  it('protocol=3 gets pusher:error 4007 and close 4007', async () => {
    await expectRefused(daemon.wsUrl(APP.key, 'protocol=3&client=js&version=8.6.0'), 4007);
  });

  it('protocol=8 gets pusher:error 4007 and close 4007', async () => {
    await expectRefused(daemon.wsUrl(APP.key, 'protocol=8&client=js&version=8.6.0'), 4007);
  });

  it('pusher:ping is answered with pusher:pong', async () => {
    const r = await connect();
    r.send({ event: 'pusher:ping', data: {} });
    const pong = await r.waitEvent('pusher:pong');
    assert.deepEqual(pong.data ?? {}, {});
    // pusher-js also accepts string data on ping; so must the server.
    const from = r.messages.length;
    r.send({ event: 'pusher:ping', data: '{}' });
    await r.waitEvent('pusher:pong', { from });
  });

  it('bad frames (malformed JSON, non-object JSON, unknown pusher: event, binary) leave the connection open and usable, and other clients undisturbed', async () => {
    const name = uniqueName('robust');
    const bystander = await connect({ label: 'bystander' });
    await bystander.subscribe(name);
    const r = await connect({ label: 'garbage sender' });
    const bad = [
      'this is not json {',
      '{"event": "pusher:subscribe", "data": ',
      '[1, 2, 3]',
      '"just a string"',
      '42',
      'null',
      '{"data": {"channel": "no-event-field"}}',
      '{"event": 17, "data": {}}',
      '{"event": "pusher:no_such_event", "data": {}}',
      Buffer.from([0x00, 0xff, 0x10, 0x80]),
    ];
    for (const frame of bad) {
      const from = r.messages.length;
      r.send(frame);
      await r.sync(); // still answering pings: the frame was handled without closing
      const replies = r.messages.slice(from).filter((m) => m.event !== 'pusher:pong');
      for (const reply of replies) {
        assert.equal(reply.event, 'pusher:error', `unexpected reply to ${String(frame)}: ${reply.raw}`);
      }
    }
    assert.equal(r.close, null);
    await r.subscribe(name);
    await node.trigger(name, 'after-garbage', { ok: true });
    const got = await r.waitEvent('after-garbage', { channel: name });
    assert.deepEqual(got.data, { ok: true });
    await bystander.waitEvent('after-garbage', { channel: name });
    assert.equal(bystander.close, null);
  });

  it('subscribing to an invalid channel name gets pusher:subscription_error on that channel and the connection stays usable', async () => {
    const r = await connect();
    for (const bad of ['bad channel!', 'x'.repeat(201)]) {
      r.send({ event: 'pusher:subscribe', data: { auth: '', channel: bad } });
      const err = await r.waitEvent('pusher:subscription_error', { channel: bad });
      assert.ok(err.data && typeof err.data === 'object', `subscription_error data ${err.raw}`);
    }
    assert.ok(!r.messages.some((m) => m.event === 'pusher_internal:subscription_succeeded'));
    const good = uniqueName('after-bad-name');
    await r.subscribe(good);
    await node.trigger(good, 'e', {});
    await r.waitEvent('e', { channel: good });
    assert.equal(r.close, null);
  });

  it('a subscribe whose data is a JSON string is accepted like an object', async () => {
    const r = await connect();
    const name = uniqueName('string-data');
    r.send({ event: 'pusher:subscribe', data: JSON.stringify({ auth: '', channel: name }) });
    await r.waitEvent('pusher_internal:subscription_succeeded', { channel: name });
  });

  it('a subscribe without a channel does not close the connection', async () => {
    const r = await connect();
    r.send({ event: 'pusher:subscribe', data: { auth: '' } });
    await r.sync();
    assert.equal(r.close, null);
  });

  it('a frame of nearly max_message_size is accepted', async () => {
    const r = await connect();
    r.send({ event: 'pusher:ping', data: { pad: 'p'.repeat(MAX_MESSAGE_SIZE - 1000) } });
    await r.waitEvent('pusher:pong');
    assert.equal(r.close, null);
  });

  it('a message over max_message_size closes the connection with 1009', async () => {
    const r = await connect();
    r.send(JSON.stringify({ event: 'pusher:ping', data: { pad: 'p'.repeat(MAX_MESSAGE_SIZE + 10) } }));
    const close = await r.waitClose();
    assert.equal(close.code, 1009, `close ${close.code} ${close.reason}`);
  });

  it('subscribing twice to a channel succeeds both times and events are delivered once', async () => {
    const r = await connect();
    const name = uniqueName('double');
    await r.subscribe(name);
    const from = r.messages.length;
    r.send({ event: 'pusher:subscribe', data: { auth: '', channel: name } });
    await r.waitEvent('pusher_internal:subscription_succeeded', { channel: name, from });
    await node.trigger(name, 'once', {});
    await node.trigger(name, 'sentinel', {});
    await r.waitEvent('sentinel', { channel: name });
    assert.equal(r.messages.filter((m) => m.event === 'once').length, 1);
    const info = await (await node.get({ path: `/channels/${name}`, params: { info: 'subscription_count' } })).json();
    assert.equal(info.occupied, true);
    if ('subscription_count' in info) assert.equal(info.subscription_count, 1);
  });

  it('pusher:unsubscribe stops delivery on that channel only', async () => {
    const r = await connect();
    const [gone, kept] = [uniqueName('gone'), uniqueName('kept')];
    await r.subscribe(gone);
    await r.subscribe(kept);
    r.send({ event: 'pusher:unsubscribe', data: { channel: gone } });
    await r.sync(); // unsubscribe has no reply; the pong proves it was processed
    await node.trigger(gone, 'after-unsubscribe', {});
    await node.trigger(kept, 'sentinel', {});
    await r.waitEvent('sentinel', { channel: kept });
    assert.equal(r.messages.filter((m) => m.channel === gone && !m.event.startsWith('pusher')).length, 0);
  });

  it('unsubscribing from a channel never subscribed is harmless', async () => {
    const r = await connect();
    r.send({ event: 'pusher:unsubscribe', data: { channel: uniqueName('never') } });
    await r.sync();
    const name = uniqueName('after-stray-unsubscribe');
    await r.subscribe(name);
    assert.equal(r.close, null);
  });

  it('a server event frame is {"event","channel","data"} with data as the exact string triggered', async () => {
    const r = await connect();
    const name = uniqueName('frame');
    await r.subscribe(name);
    const data = JSON.stringify({ a: 1, text: 'ünïcode ✓' });
    await node.trigger(name, 'shape', data);
    const msg = await r.waitEvent('shape', { channel: name });
    assert.deepEqual(msg.parsed, { event: 'shape', channel: name, data });
  });

  it('a client closing abruptly does not disturb the other subscribers of its channel', async () => {
    const name = uniqueName('abrupt');
    const stays = await connect();
    await stays.subscribe(name);
    const leaves = await connect();
    await leaves.subscribe(name);
    leaves.terminate();
    await withTimeout(leaves.closed, 5000, 'terminated client close');
    await node.trigger(name, 'still-here', {});
    await stays.waitEvent('still-here', { channel: name });
  });
});
