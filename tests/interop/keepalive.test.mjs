// Keep-alive with a short server activity_timeout (PROTOCOL.md section 2).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { Daemon, Inbox, RawClient, appConfig, connectPusherJs, subscribePusherJs, uniqueName } from './helpers.mjs';

const ACTIVITY_TIMEOUT = 2; // seconds
// The server may sweep for idle connections coarsely: allow two periods plus slack.
const PING_WITHIN_MS = (2 * ACTIVITY_TIMEOUT + 3) * 1000;

describe('keep-alive with activity_timeout = 2 s', () => {
  let daemon;
  let node;
  const raws = [];
  const clients = [];

  before(async () => {
    daemon = await Daemon.start({ server: { activity_timeout: ACTIVITY_TIMEOUT }, apps: [appConfig()] });
    node = daemon.sdk();
  });

  after(async () => {
    for (const r of raws) r.terminate();
    for (const c of clients) c.disconnect();
    if (daemon) await daemon.stop();
  });

  it('connection_established advertises the configured activity_timeout', async () => {
    const r = await RawClient.connect(daemon);
    raws.push(r);
    assert.equal(r.activityTimeout, ACTIVITY_TIMEOUT);
  });

  it('a silent connection gets a server pusher:ping, and answering pusher:pong keeps it open', async () => {
    const r = await RawClient.connect(daemon);
    raws.push(r);
    const name = uniqueName('idle');
    await r.subscribe(name);
    const from = r.messages.length;
    const ping = await r.waitEvent('pusher:ping', { from, timeout: PING_WITHIN_MS });
    assert.equal(ping.channel, undefined);
    r.send({ event: 'pusher:pong', data: {} });
    await node.trigger(name, 'after-ping', {});
    await r.waitEvent('after-ping', { channel: name });
    assert.equal(r.close, null);
  });

  it('pusher-js keeps its connection across idle periods (ping/pong with the server) and still receives events', async () => {
    const c = await connectPusherJs(daemon);
    clients.push(c);
    const states = [];
    c.connection.bind('state_change', (s) => states.push(s.current));
    const frames = new Inbox('pusher-js frames');
    c.connection.bind('message', (m) => frames.push(m));
    const name = uniqueName('pjs-idle');
    const { inbox } = await subscribePusherJs(c, name);
    // Either side may start the exchange: pusher-js pings after min(own, server) activity timeout,
    // the server pings an idle connection. Both prove the keep-alive round trip works.
    await frames.waitFor((m) => m.event === 'pusher:pong' || m.event === 'pusher:ping', {
      timeout: PING_WITHIN_MS,
      what: 'a keep-alive frame',
    });
    await node.trigger(name, 'after-idle', { ok: true });
    const got = await inbox.waitFor((e) => e.event === 'after-idle', { what: 'after-idle' });
    assert.deepEqual(got.data, { ok: true });
    assert.deepEqual(states, [], 'pusher-js changed connection state while idle');
    assert.equal(c.connection.state, 'connected');
  });
});
