// pusher-js 8 on public channels, fed by the Node (pusher 5) and Python (pusher 3.3) server SDKs.
// PROTOCOL.md sections 1, 3 and 5.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import {
  Daemon,
  Inbox,
  PusherJS,
  appConfig,
  connectPusherJs,
  pollUntil,
  pusherJsErrorCode,
  pyOk,
  pusherJsOptions,
  subscribePusherJs,
  uniqueName,
} from './helpers.mjs';

const COUNT_APP = Object.freeze({ id: '100002', key: 'count-key', secret: 'count-secret' });
const DISABLED_APP = Object.freeze({ id: '100003', key: 'disabled-key', secret: 'disabled-secret' });

describe('public channels: pusher-js 8 with the Node and Python server SDKs', () => {
  let daemon;
  let node; // Node server SDK
  const clients = [];

  async function client(options) {
    const c = await connectPusherJs(daemon, options);
    clients.push(c);
    return c;
  }

  /** Events other than pusher:* (what an application sees). */
  function appEvents(inbox) {
    return inbox.filter((e) => !e.event.startsWith('pusher:'));
  }

  before(async () => {
    daemon = await Daemon.start({
      apps: [
        appConfig(),
        appConfig({ ...COUNT_APP, subscription_count: true }),
        appConfig({ ...DISABLED_APP, enabled: false }),
      ],
    });
    node = daemon.sdk();
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    if (daemon) await daemon.stop();
  });

  it('pusher-js reaches state connected and gets a socket_id of the form digits.digits', async () => {
    const c = await client();
    assert.equal(c.connection.state, 'connected');
    assert.match(c.connection.socket_id, /^\d+\.\d+$/);
  });

  for (const [what, key, code] of [
    ['an unknown app key', 'no-such-key', 4001],
    ['a disabled app', DISABLED_APP.key, 4003],
  ]) {
    it(`pusher-js connecting to ${what} reports error ${code} and gives up (state disconnected, no retry)`, async () => {
      const c = new PusherJS(key, pusherJsOptions(daemon));
      clients.push(c);
      const errors = new Inbox('pusher-js errors');
      const states = new Inbox('pusher-js states');
      c.connection.bind('error', (err) => errors.push(err));
      c.connection.bind('state_change', (s) => states.push(s.current));
      await errors.waitFor((e) => pusherJsErrorCode(e) === code, { what: `error ${code}` });
      await states.waitFor((s) => s === 'disconnected', { what: 'state disconnected' });
      assert.ok(!states.items.includes('connected'), `states: ${states.items}`);
      assert.equal(c.connection.socket_id, undefined);
    });
  }

  it('two pusher-js connections get different socket_ids', async () => {
    const a = await client();
    const b = await client();
    assert.notEqual(a.connection.socket_id, b.connection.socket_id);
  });

  it('pusher-js subscribing to a public channel gets pusher:subscription_succeeded', async () => {
    const c = await client();
    const name = uniqueName('public');
    const { channel } = await subscribePusherJs(c, name);
    assert.equal(channel.subscribed, true);
  });

  it('an event triggered by the Node SDK reaches pusher-js with object data parsed', async () => {
    const c = await client();
    const name = uniqueName('node-single');
    const { inbox } = await subscribePusherJs(c, name);
    const data = { text: 'hello', n: 42, nested: { list: [1, 'two', null, true] } };
    const res = await node.trigger(name, 'greeting', data);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {});
    const got = await inbox.waitFor((e) => e.event === 'greeting', { what: 'greeting' });
    assert.deepEqual(got.data, data);
  });

  it('an event triggered by the Python SDK reaches pusher-js with object data parsed', async () => {
    const c = await client();
    const name = uniqueName('py-single');
    const { inbox } = await subscribePusherJs(c, name);
    const data = { text: 'from python', n: 7, nested: { ok: true } };
    const [result] = await pyOk(daemon, [{ op: 'trigger', channels: [name], event: 'py-greeting', data }]);
    assert.deepEqual(result, {});
    const got = await inbox.waitFor((e) => e.event === 'py-greeting', { what: 'py-greeting' });
    assert.deepEqual(got.data, data);
  });

  it('string data round-trips: plain text stays a string, JSON text is parsed, unicode is intact', async () => {
    const c = await client();
    const name = uniqueName('strings');
    const { inbox } = await subscribePusherJs(c, name);
    await node.trigger(name, 'plain', 'just some text, not JSON');
    await node.trigger(name, 'json-text', '{"already":"encoded","n":1}');
    await node.trigger(name, 'unicode', { text: 'héllo wörld ✓ 日本語 😀', quote: 'a "quoted" \\ backslash' });
    await pyOk(daemon, [{ op: 'trigger', channels: [name], event: 'py-unicode', data: { text: 'ünïcödé ✓ 😀' } }]);
    assert.equal((await inbox.waitFor((e) => e.event === 'plain')).data, 'just some text, not JSON');
    assert.deepEqual((await inbox.waitFor((e) => e.event === 'json-text')).data, { already: 'encoded', n: 1 });
    assert.deepEqual((await inbox.waitFor((e) => e.event === 'unicode')).data, {
      text: 'héllo wörld ✓ 日本語 😀',
      quote: 'a "quoted" \\ backslash',
    });
    assert.deepEqual((await inbox.waitFor((e) => e.event === 'py-unicode')).data, { text: 'ünïcödé ✓ 😀' });
  });

  it('events on one channel arrive in the order they were triggered', async () => {
    const c = await client();
    const name = uniqueName('order');
    const { inbox } = await subscribePusherJs(c, name);
    for (let i = 0; i < 20; i += 1) await node.trigger(name, 'seq', { i });
    await inbox.waitFor((e) => e.event === 'seq' && e.data.i === 19, { what: 'seq 19' });
    assert.deepEqual(
      inbox.filter((e) => e.event === 'seq').map((e) => e.data.i),
      Array.from({ length: 20 }, (_, i) => i),
    );
  });

  it('a Node SDK trigger to several channels is delivered once on each named channel and not elsewhere', async () => {
    const c = await client();
    const [a, b, other] = [uniqueName('multi-a'), uniqueName('multi-b'), uniqueName('multi-other')];
    const subA = await subscribePusherJs(c, a);
    const subB = await subscribePusherJs(c, b);
    const subOther = await subscribePusherJs(c, other);
    await node.trigger([a, b], 'fanout', { to: 'a+b' });
    await node.trigger(other, 'sentinel', {});
    await subOther.inbox.waitFor((e) => e.event === 'sentinel', { what: 'sentinel' });
    for (const { inbox } of [subA, subB]) {
      await inbox.waitFor((e) => e.event === 'fanout', { what: 'fanout' });
    }
    // a, b and other are fed by the same REST calls in order; once the sentinel is in, nothing else is coming.
    assert.equal(subA.inbox.filter((e) => e.event === 'fanout').length, 1);
    assert.equal(subB.inbox.filter((e) => e.event === 'fanout').length, 1);
    assert.deepEqual(appEvents(subOther.inbox).map((e) => e.event), ['sentinel']);
  });

  it('a Python SDK trigger to several channels is delivered once on each named channel and not elsewhere', async () => {
    const c = await client();
    const [a, b, other] = [uniqueName('pymulti-a'), uniqueName('pymulti-b'), uniqueName('pymulti-other')];
    const subA = await subscribePusherJs(c, a);
    const subB = await subscribePusherJs(c, b);
    const subOther = await subscribePusherJs(c, other);
    await pyOk(daemon, [
      { op: 'trigger', channels: [a, b], event: 'fanout', data: { to: 'a+b' } },
      { op: 'trigger', channels: [other], event: 'sentinel', data: {} },
    ]);
    await subOther.inbox.waitFor((e) => e.event === 'sentinel', { what: 'sentinel' });
    for (const { inbox } of [subA, subB]) {
      const got = await inbox.waitFor((e) => e.event === 'fanout', { what: 'fanout' });
      assert.deepEqual(got.data, { to: 'a+b' });
    }
    assert.equal(subA.inbox.filter((e) => e.event === 'fanout').length, 1);
    assert.equal(subB.inbox.filter((e) => e.event === 'fanout').length, 1);
    assert.deepEqual(appEvents(subOther.inbox).map((e) => e.event), ['sentinel']);
  });

  it('Node SDK triggerBatch delivers each event to its own channel', async () => {
    const c = await client();
    const [a, b] = [uniqueName('batch-a'), uniqueName('batch-b')];
    const subA = await subscribePusherJs(c, a);
    const subB = await subscribePusherJs(c, b);
    const res = await node.triggerBatch([
      { channel: a, name: 'first', data: { n: 1 } },
      { channel: b, name: 'second', data: { n: 2 } },
      { channel: a, name: 'third', data: 'text three' },
    ]);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {});
    await subA.inbox.waitFor((e) => e.event === 'third', { what: 'third' });
    await subB.inbox.waitFor((e) => e.event === 'second', { what: 'second' });
    assert.deepEqual(
      appEvents(subA.inbox).map((e) => [e.event, e.data]),
      [
        ['first', { n: 1 }],
        ['third', 'text three'],
      ],
    );
    assert.deepEqual(appEvents(subB.inbox).map((e) => [e.event, e.data]), [['second', { n: 2 }]]);
  });

  it('Python SDK trigger_batch delivers each event to its own channel', async () => {
    const c = await client();
    const [a, b] = [uniqueName('pybatch-a'), uniqueName('pybatch-b')];
    const subA = await subscribePusherJs(c, a);
    const subB = await subscribePusherJs(c, b);
    const [result] = await pyOk(daemon, [
      {
        op: 'trigger_batch',
        batch: [
          { channel: a, name: 'first', data: { n: 1 } },
          { channel: b, name: 'second', data: { n: 2 } },
          { channel: a, name: 'third', data: { n: 3 } },
        ],
      },
    ]);
    assert.deepEqual(result, {});
    await subA.inbox.waitFor((e) => e.event === 'third', { what: 'third' });
    await subB.inbox.waitFor((e) => e.event === 'second', { what: 'second' });
    assert.deepEqual(
      appEvents(subA.inbox).map((e) => [e.event, e.data]),
      [
        ['first', { n: 1 }],
        ['third', { n: 3 }],
      ],
    );
    assert.deepEqual(appEvents(subB.inbox).map((e) => [e.event, e.data]), [['second', { n: 2 }]]);
  });

  async function exclusionSetup(prefix) {
    const excluded = await client();
    const other = await client();
    const name = uniqueName(prefix);
    const subExcluded = await subscribePusherJs(excluded, name);
    const subOther = await subscribePusherJs(other, name);
    return { excluded, name, subExcluded, subOther };
  }

  async function assertExcluded({ subExcluded, subOther }) {
    // Both get the sentinel, sent after the excluding event; only `other` got the excluded one.
    await subExcluded.inbox.waitFor((e) => e.event === 'sentinel', { what: 'sentinel on excluded client' });
    await subOther.inbox.waitFor((e) => e.event === 'sentinel', { what: 'sentinel on other client' });
    assert.deepEqual(appEvents(subOther.inbox).map((e) => e.event), ['not-for-sender', 'sentinel']);
    assert.deepEqual(appEvents(subExcluded.inbox).map((e) => e.event), ['sentinel']);
  }

  it('Node SDK trigger with socket_id skips that pusher-js connection and reaches the others', async () => {
    const s = await exclusionSetup('exclude-node');
    await node.trigger(s.name, 'not-for-sender', { x: 1 }, { socket_id: s.excluded.connection.socket_id });
    await node.trigger(s.name, 'sentinel', {});
    await assertExcluded(s);
  });

  it('Python SDK trigger with socket_id skips that pusher-js connection and reaches the others', async () => {
    const s = await exclusionSetup('exclude-py');
    await pyOk(daemon, [
      { op: 'trigger', channels: [s.name], event: 'not-for-sender', data: { x: 1 }, socket_id: s.excluded.connection.socket_id },
      { op: 'trigger', channels: [s.name], event: 'sentinel', data: {} },
    ]);
    await assertExcluded(s);
  });

  it('Node SDK triggerBatch with a socket_id on an event skips that pusher-js connection', async () => {
    const s = await exclusionSetup('exclude-batch');
    await node.triggerBatch([
      { channel: s.name, name: 'not-for-sender', data: { x: 1 }, socket_id: s.excluded.connection.socket_id },
      { channel: s.name, name: 'sentinel', data: {} },
    ]);
    await assertExcluded(s);
  });

  it('pusher-js unsubscribe stops delivery on that channel', async () => {
    const c = await client();
    const [gone, kept] = [uniqueName('unsub-gone'), uniqueName('unsub-kept')];
    const subGone = await subscribePusherJs(c, gone);
    const subKept = await subscribePusherJs(c, kept);
    c.unsubscribe(gone);
    // The unsubscribe frame has no reply; the channel becoming unoccupied shows it was handled.
    await pollUntil(
      async () => {
        const res = await node.get({ path: `/channels/${gone}` });
        return (await res.json()).occupied === false;
      },
      { what: `${gone} to become unoccupied` },
    );
    await node.trigger(gone, 'after-unsubscribe', {});
    await node.trigger(kept, 'sentinel', {});
    await subKept.inbox.waitFor((e) => e.event === 'sentinel', { what: 'sentinel' });
    assert.deepEqual(appEvents(subGone.inbox), []);
  });

  it('pusher-js receives pusher:subscription_count updates when the app enables subscription counting', async () => {
    const first = await client({ key: COUNT_APP.key });
    const name = uniqueName('counted');
    const { inbox } = await subscribePusherJs(first, name);
    const second = await client({ key: COUNT_APP.key });
    await subscribePusherJs(second, name);
    const two = await inbox.waitFor((e) => e.event === 'pusher:subscription_count' && e.data.subscription_count === 2, {
      what: 'subscription_count 2',
    });
    assert.deepEqual(two.data, { subscription_count: 2 });
    second.disconnect();
    await inbox.waitFor((e) => e.event === 'pusher:subscription_count' && e.data.subscription_count === 1, {
      what: 'subscription_count back to 1 after the second client left',
    });
  });

  it('an app without subscription counting sends no pusher:subscription_count events', async () => {
    const first = await client();
    const name = uniqueName('uncounted');
    const { inbox } = await subscribePusherJs(first, name);
    const second = await client();
    await subscribePusherJs(second, name);
    await node.trigger(name, 'sentinel', {});
    await inbox.waitFor((e) => e.event === 'sentinel', { what: 'sentinel' });
    assert.deepEqual(inbox.filter((e) => e.event === 'pusher:subscription_count'), []);
  });
});
