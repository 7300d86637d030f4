// pysher 1.0.8 (Python client, protocol 6, websocket-client), run by pysher_client.py, against
// the daemon: it signs private- and presence- subscriptions itself with the app secret (its
// channel_data is Python's json.dumps, spaced differently from JSON.stringify) and receives events
// triggered through the Node SDK. PROTOCOL.md sections 1, 3, 4.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import {
  Daemon,
  appConfig,
  connectPusherJs,
  disconnectPusherJs,
  runPysher,
  sdkAuthOptions,
  subscribePusherJs,
  uniqueName,
} from './helpers.mjs';

const PYSHER_TIMEOUT = 10000; // Python start-up included

describe('pysher (Python client)', () => {
  let daemon;
  let node;
  const pyshers = [];
  const clients = [];

  function pysher(options) {
    const p = runPysher(daemon, options);
    pyshers.push(p);
    return p;
  }

  before(async () => {
    daemon = await Daemon.start({ apps: [appConfig()] });
    node = daemon.sdk();
  });

  after(async () => {
    await Promise.all(pyshers.map((p) => p.stop()));
    for (const c of clients) disconnectPusherJs(c);
    if (daemon) await daemon.stop();
  });

  it('pysher connects with protocol 6 and receives Node SDK events on a private and a public channel', async () => {
    const priv = uniqueName('private-pysher');
    const pub = uniqueName('public-pysher');
    const p = pysher({ channels: [priv, pub], events: ['order-update', 'news'] });
    const connected = await p.inbox.waitFor((m) => m.type === 'connected', { timeout: PYSHER_TIMEOUT, what: 'pysher connected' });
    assert.match(connected.socket_id, /^\d+\.\d+$/);
    await p.inbox.waitFor((m) => m.type === 'subscribed' && m.channel === priv, { what: `pysher subscribed to ${priv}` });
    await p.inbox.waitFor((m) => m.type === 'subscribed' && m.channel === pub, { what: `pysher subscribed to ${pub}` });

    await node.trigger(priv, 'order-update', { id: 'ORD-7', status: 'packed' });
    await node.trigger(pub, 'news', 'plain text');
    const ev = await p.inbox.waitFor((m) => m.type === 'event' && m.event === 'order-update', { what: 'order-update at pysher' });
    assert.equal(ev.channel, priv);
    assert.deepEqual(JSON.parse(ev.data), { id: 'ORD-7', status: 'packed' });
    const news = await p.inbox.waitFor((m) => m.type === 'event' && m.event === 'news', { what: 'news at pysher' });
    assert.equal(news.data, 'plain text');
    assert.equal(p.inbox.filter((m) => m.type === 'subscription_error').length, 0);
  });

  it('the pusher:ping pysher sends on open (data "") is answered with pusher:pong, not pusher:error', async () => {
    // pysher sends {"event":"pusher:ping","data":""} (and answers server pings the same way).
    const p = pysher({ channels: [], events: [] });
    await p.inbox.waitFor((m) => m.type === 'connected', { timeout: PYSHER_TIMEOUT, what: 'pysher connected' });
    await p.inbox.waitFor((m) => m.type === 'pong' || m.type === 'error', { what: 'answer to the pysher ping' });
    assert.deepEqual(p.inbox.items.filter((m) => m.type === 'error'), []);
    assert.equal(p.inbox.filter((m) => m.type === 'pong').length, 1);
  });

  it('pysher signing with a wrong secret gets pusher:subscription_error on the private channel', async () => {
    const priv = uniqueName('private-pysher-bad');
    const p = pysher({ channels: [priv], events: [], secret: 'not-the-secret' });
    const err = await p.inbox.waitFor((m) => m.type === 'subscription_error', { timeout: PYSHER_TIMEOUT, what: 'subscription_error' });
    assert.equal(err.channel, priv);
    const data = typeof err.data === 'string' ? JSON.parse(err.data) : err.data;
    assert.equal(data.status, 401);
  });

  it('pysher joins a presence channel with Python-serialized channel_data; pusher-js sees it as a member', async () => {
    const name = uniqueName('presence-pysher');
    const watcher = await connectPusherJs(daemon, sdkAuthOptions(node, {
      presenceData: () => ({ user_id: 'js-1', user_info: { name: 'JS' } }),
    }));
    clients.push(watcher);
    const { channel, inbox } = await subscribePusherJs(watcher, name);

    const p = pysher({
      channels: [name],
      events: ['hello'],
      userData: { user_id: 'py-1', user_info: { name: 'Py', langs: ['python', 'c'] } },
    });
    await p.inbox.waitFor((m) => m.type === 'subscribed' && m.channel === name, { timeout: PYSHER_TIMEOUT, what: 'pysher in presence' });
    const added = await inbox.waitFor((e) => e.event === 'pusher:member_added', { what: 'member_added for py-1' });
    assert.deepEqual(added.data, { id: 'py-1', info: { name: 'Py', langs: ['python', 'c'] } });
    assert.equal(channel.members.count, 2);

    await node.trigger(name, 'hello', { to: 'everyone' });
    const ev = await p.inbox.waitFor((m) => m.type === 'event' && m.event === 'hello', { what: 'hello at pysher' });
    assert.deepEqual(JSON.parse(ev.data), { to: 'everyone' });

    await p.stop();
    const removed = await inbox.waitFor((e) => e.event === 'pusher:member_removed', { what: 'member_removed for py-1' });
    assert.equal(removed.data.id, 'py-1');
  });
});
