// pusher-js 8 on private-, presence- and cache- channels and client events, authorized through
// `channelAuthorization.customHandler` signing with the Node server SDK (as a customer's auth
// endpoint would); events and REST queries from the Node (pusher 5) and Python (pusher 3.3) SDKs.
// PROTOCOL.md sections 3, 4, 5 and 7.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import {
  APP,
  Daemon,
  Inbox,
  RawClient,
  appConfig,
  connectPusherJs,
  disconnectPusherJs,
  pollUntil,
  pusherJsErrorCode,
  pyOk,
  sdkAuthOptions,
  sdkError,
  subscribePusherJs,
  uniqueName,
  watchPusherJs,
} from './helpers.mjs';

const NO_CLIENT_EVENTS_APP = Object.freeze({ id: '100011', key: 'noclient-key', secret: 'noclient-secret' });
const MAX_MEMBERS = 3;
const CACHE_TTL = 60;

/** Subscribe with pusher-js and wait for success or error; resolves {channel, inbox, outcome}. */
async function subscribeOutcome(client, name) {
  const channel = client.subscribe(name);
  const inbox = new Inbox(`pusher-js on ${name}`);
  channel.bind_global((event, data) => inbox.push({ event, data }));
  const outcome = await inbox.waitFor(
    (e) => e.event === 'pusher:subscription_succeeded' || e.event === 'pusher:subscription_error',
    { what: `subscription outcome on ${name}` },
  );
  return { channel, inbox, outcome };
}

function sortById(members) {
  return [...members].sort((x, y) => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0));
}

describe('private, presence and cache channels and client events with pusher-js and both server SDKs', () => {
  let daemon;
  let node; // Node server SDK, also the "auth endpoint" signer
  let forger; // Node SDK holding a wrong secret
  const clients = [];

  async function client(options = {}) {
    const c = await connectPusherJs(daemon, options);
    clients.push(c);
    return c;
  }

  /** A pusher-js client whose auth endpoint signs presence- channels as `userId` with `userInfo`. */
  function member(userId, userInfo) {
    return client(sdkAuthOptions(node, { presenceData: () => ({ user_id: userId, user_info: userInfo }) }));
  }

  async function getJson(path, params) {
    const res = await node.get({ path, params });
    assert.equal(res.status, 200);
    return res.json();
  }

  before(async () => {
    daemon = await Daemon.start({
      apps: [appConfig(), appConfig({ ...NO_CLIENT_EVENTS_APP, client_events: false })],
      limits: { max_presence_members: MAX_MEMBERS, cache_ttl: CACHE_TTL },
    });
    node = daemon.sdk();
    forger = daemon.sdk({ ...APP, secret: 'not-the-app-secret' });
  });

  after(async () => {
    for (const c of clients) disconnectPusherJs(c);
    if (daemon) await daemon.stop();
  });

  // ------------------------------------------------------------------ private channels

  describe('private channels', () => {
    it('pusher-js subscribes with an SDK-signed auth and receives events from the Node and Python SDKs', async () => {
      const auth = sdkAuthOptions(node);
      const c = await client(auth);
      const name = uniqueName('private-orders');
      const { channel, inbox } = await subscribePusherJs(c, name);
      assert.equal(channel.subscribed, true);
      assert.deepEqual(auth.calls, [{ kind: 'channel', socketId: c.connection.socket_id, channelName: name }]);

      await node.trigger(name, 'order-update', { id: 'ORD-1', status: 'shipped' });
      const fromNode = await inbox.waitFor((e) => e.event === 'order-update', { what: 'order-update' });
      assert.deepEqual(fromNode.data, { id: 'ORD-1', status: 'shipped' });

      await pyOk(daemon, [{ op: 'trigger', channels: [name], event: 'py-update', data: { id: 'ORD-2' } }]);
      const fromPy = await inbox.waitFor((e) => e.event === 'py-update', { what: 'py-update' });
      assert.deepEqual(fromPy.data, { id: 'ORD-2' });
    });

    it('a signature made with the wrong secret gives pusher:subscription_error AuthError 401 and the connection stays up', async () => {
      const c = await client(sdkAuthOptions((ch) => (ch && ch.includes('forged') ? forger : node)));
      const watch = watchPusherJs(c);
      const bad = uniqueName('private-forged');
      const { outcome, channel } = await subscribeOutcome(c, bad);
      assert.equal(outcome.event, 'pusher:subscription_error');
      assert.equal(outcome.data.type, 'AuthError');
      assert.equal(outcome.data.status, 401);
      assert.equal(typeof outcome.data.error, 'string');
      assert.equal(channel.subscribed, false);

      // Same connection, a correctly signed channel still works.
      const good = uniqueName('private-trusted');
      await subscribePusherJs(c, good);
      assert.equal(c.connection.state, 'connected');
      assert.deepEqual(watch.states.items, []);

      // The refused channel gets nothing.
      await node.trigger(bad, 'secret', { leaked: true });
      const { inbox } = await subscribePusherJs(await client(sdkAuthOptions(node)), bad);
      await node.trigger(bad, 'after', {});
      await inbox.waitFor((e) => e.event === 'after', { what: 'event for the rightful subscriber' });
      assert.equal(c.channel(bad).subscribed, false);
    });

    it('a signature for another socket_id is refused with 401', async () => {
      const c = await client({
        channelAuthorization: {
          customHandler: ({ channelName }, callback) => callback(null, node.authorizeChannel('1234.5678', channelName)),
        },
      });
      const { outcome } = await subscribeOutcome(c, uniqueName('private-replayed'));
      assert.equal(outcome.event, 'pusher:subscription_error');
      assert.equal(outcome.data.status, 401);
      assert.equal(c.connection.state, 'connected');
    });

    it('a raw private subscribe with an empty auth gets the subscription_error frame with type and status', async () => {
      const raw = await RawClient.connect(daemon);
      try {
        const name = uniqueName('private-noauth');
        raw.send({ event: 'pusher:subscribe', data: { channel: name, auth: '' } });
        const err = await raw.waitEvent('pusher:subscription_error', { channel: name });
        assert.equal(err.data.type, 'AuthError');
        assert.equal(err.data.status, 401);
        await raw.sync();
        assert.equal(raw.close, null);
      } finally {
        raw.terminate();
      }
    });
  });

  // ------------------------------------------------------------------ presence channels

  describe('presence channels', () => {
    it('pusher-js members: me, count and each; the earlier member sees pusher:member_added with the user_info', async () => {
      const name = uniqueName('presence-room');
      const alice = await member('alice', { name: 'Alice' });
      const { channel: chA, inbox: inA } = await subscribePusherJs(alice, name);
      assert.equal(chA.members.count, 1);
      assert.deepEqual(chA.members.me, { id: 'alice', info: { name: 'Alice' } });

      const bob = await member('bob', { name: 'Bob', role: 'admin' });
      const { channel: chB } = await subscribePusherJs(bob, name);
      assert.equal(chB.members.count, 2);
      assert.deepEqual(chB.members.me, { id: 'bob', info: { name: 'Bob', role: 'admin' } });
      const seen = [];
      chB.members.each((m) => seen.push(m));
      assert.deepEqual(sortById(seen), [
        { id: 'alice', info: { name: 'Alice' } },
        { id: 'bob', info: { name: 'Bob', role: 'admin' } },
      ]);

      const added = await inA.waitFor((e) => e.event === 'pusher:member_added', { what: 'member_added for bob' });
      assert.deepEqual(added.data, { id: 'bob', info: { name: 'Bob', role: 'admin' } });
      assert.equal(chA.members.count, 2);
    });

    it('a numeric user_id from the auth endpoint is a string member id', async () => {
      const name = uniqueName('presence-numeric');
      const c = await client(sdkAuthOptions(node, { presenceData: () => ({ user_id: 42, user_info: {} }) }));
      const { channel } = await subscribePusherJs(c, name);
      assert.equal(channel.members.count, 1);
      assert.equal(String(channel.members.me.id), '42');
      const res = await getJson(`/channels/${name}/users`);
      assert.deepEqual(res, { users: [{ id: '42' }] });
    });

    it('a user on two connections is one member: member_added once, member_removed only when the last connection leaves', async () => {
      const name = uniqueName('presence-multi');
      const alice = await member('alice', { name: 'Alice' });
      const { channel: chA, inbox: inA } = await subscribePusherJs(alice, name);

      const bob1 = await member('bob', { name: 'Bob' });
      await subscribePusherJs(bob1, name);
      await inA.waitFor((e) => e.event === 'pusher:member_added', { what: 'member_added for bob' });

      const bob2 = await member('bob', { name: 'Bob' });
      const { channel: chB2 } = await subscribePusherJs(bob2, name);
      assert.equal(chB2.members.count, 2);

      // Barrier: a server event sent after bob2 joined reaches alice after anything the join caused.
      await node.trigger(name, 'barrier-joined', {});
      await inA.waitFor((e) => e.event === 'barrier-joined', { what: 'barrier after the second join' });
      assert.equal(inA.filter((e) => e.event === 'pusher:member_added').length, 1, JSON.stringify(inA.items));
      assert.equal(chA.members.count, 2);

      // bob's second connection leaves: bob is still a member.
      bob2.disconnect();
      await pollUntil(
        async () => (await getJson(`/channels/${name}`, { info: 'subscription_count' })).subscription_count === 2,
        { what: 'subscription_count back to 2 after bob2 left' },
      );
      await node.trigger(name, 'barrier-left', {});
      await inA.waitFor((e) => e.event === 'barrier-left', { what: 'barrier after the second connection left' });
      assert.equal(inA.filter((e) => e.event === 'pusher:member_removed').length, 0, JSON.stringify(inA.items));
      assert.deepEqual(await getJson(`/channels/${name}`, { info: 'user_count' }), { occupied: true, user_count: 2 });

      // bob's last connection leaves: one member_removed.
      bob1.disconnect();
      const removed = await inA.waitFor((e) => e.event === 'pusher:member_removed', { what: 'member_removed for bob' });
      assert.deepEqual(removed.data, { id: 'bob', info: { name: 'Bob' } });
      assert.equal(chA.members.count, 1);
      await node.trigger(name, 'barrier-gone', {});
      await inA.waitFor((e) => e.event === 'barrier-gone', { what: 'barrier after bob left' });
      assert.equal(inA.filter((e) => e.event === 'pusher:member_removed').length, 1);
    });

    it('user_count and the user list from the Node SDK (get) and the Python SDK (channel_info, users_info)', async () => {
      const name = uniqueName('presence-count');
      await subscribePusherJs(await member('u1', { n: 1 }), name);
      await subscribePusherJs(await member('u2', { n: 2 }), name);
      await subscribePusherJs(await member('u2', { n: 2 }), name); // same user again

      const users = await getJson(`/channels/${name}/users`);
      assert.deepEqual(sortById(users.users), [{ id: 'u1' }, { id: 'u2' }]);
      assert.deepEqual(await getJson(`/channels/${name}`, { info: 'user_count' }), { occupied: true, user_count: 2 });

      const [pyUsers, pyInfo] = await pyOk(daemon, [
        { op: 'users_info', channel: name },
        { op: 'channel_info', channel: name, attributes: ['user_count'] },
      ]);
      assert.deepEqual(sortById(pyUsers.users), [{ id: 'u1' }, { id: 'u2' }]);
      assert.deepEqual(pyInfo, { occupied: true, user_count: 2 });

      const prefixed = await getJson('/channels', { filter_by_prefix: name, info: 'user_count' });
      assert.deepEqual(prefixed, { channels: { [name]: { user_count: 2 } } });
    });

    it('listing users of a non-presence channel is a 400 for both SDKs', async () => {
      const name = uniqueName('private-nousers');
      const err = await sdkError(node.get({ path: `/channels/${name}/users` }));
      assert.equal(err.status, 400);
      const [py] = await daemon.py([{ op: 'users_info', channel: name }]);
      assert.equal(py.ok, false);
      assert.equal(py.status, 400);
    });

    it(`the ${MAX_MEMBERS + 1}th distinct member is refused with LimitReached; another connection of a member still joins`, async () => {
      const name = uniqueName('presence-full');
      for (let i = 1; i <= MAX_MEMBERS; i += 1) {
        await subscribePusherJs(await member(`m${i}`, { i }), name);
      }
      const extra = await member('one-too-many', {});
      const watch = watchPusherJs(extra);
      const { outcome } = await subscribeOutcome(extra, name);
      assert.equal(outcome.event, 'pusher:subscription_error');
      assert.equal(outcome.data.type, 'LimitReached');
      assert.equal(extra.connection.state, 'connected');
      assert.deepEqual(watch.states.items, []);

      const again = await member('m1', { i: 1 });
      const { channel } = await subscribePusherJs(again, name);
      assert.equal(channel.members.count, MAX_MEMBERS);
      assert.equal((await getJson(`/channels/${name}/users`)).users.length, MAX_MEMBERS);
    });

    it('user_info over 1 KB and a user_id over 128 characters are refused with LimitReached', async () => {
      const big = await member('big-info', { blob: 'x'.repeat(1100) });
      const r1 = await subscribeOutcome(big, uniqueName('presence-biginfo'));
      assert.equal(r1.outcome.event, 'pusher:subscription_error');
      assert.equal(r1.outcome.data.type, 'LimitReached');

      const longId = await member('u'.repeat(129), {});
      const r2 = await subscribeOutcome(longId, uniqueName('presence-longid'));
      assert.equal(r2.outcome.event, 'pusher:subscription_error');
      assert.equal(r2.outcome.data.type, 'LimitReached');

      const okId = await member('u'.repeat(128), { blob: 'x'.repeat(900) });
      const r3 = await subscribeOutcome(okId, uniqueName('presence-limits-ok'));
      assert.equal(r3.outcome.event, 'pusher:subscription_succeeded');
    });

    it('presence via sign-in: no channel_data from the auth endpoint, the member comes from pusher.signin() user_data', async () => {
      const name = uniqueName('presence-signedin');
      const c = await client(sdkAuthOptions(node, {
        presenceData: () => undefined,
        userData: () => ({ id: 'carol', user_info: { name: 'Carol' } }),
      }));
      c.signin();
      const { channel } = await subscribePusherJs(c, name);
      assert.equal(channel.members.count, 1);
      assert.deepEqual(channel.members.me, { id: 'carol', info: { name: 'Carol' } });
      assert.deepEqual(await getJson(`/channels/${name}/users`), { users: [{ id: 'carol' }] });
    });
  });

  // ------------------------------------------------------------------ client events

  describe('client events', () => {
    it('channel.trigger on a private channel reaches the other subscriber, not the sender', async () => {
      const name = uniqueName('private-chat');
      const a = await client(sdkAuthOptions(node));
      const b = await client(sdkAuthOptions(node));
      const { channel: chA, inbox: inA } = await subscribePusherJs(a, name);
      const { channel: chB, inbox: inB } = await subscribePusherJs(b, name);

      assert.equal(chA.trigger('client-typing', { user: 'A', typing: true }), true);
      const got = await inB.waitFor((e) => e.event === 'client-typing', { what: 'client-typing at B' });
      assert.deepEqual(got.data, { user: 'A', typing: true });

      // B answers; A receives it, and by then would have received its own event if echoed.
      chB.trigger('client-reply', { ok: 1 });
      await inA.waitFor((e) => e.event === 'client-reply', { what: 'client-reply at A' });
      assert.equal(inA.filter((e) => e.event === 'client-typing').length, 0, JSON.stringify(inA.items));
    });

    it('on a presence channel the receiver callback gets metadata.user_id of the sender', async () => {
      const name = uniqueName('presence-chat');
      const alice = await member('alice', { name: 'Alice' });
      const bob = await member('bob', { name: 'Bob' });
      const { channel: chA } = await subscribePusherJs(alice, name);
      const { channel: chB } = await subscribePusherJs(bob, name);
      const received = new Inbox('bob client-msg');
      chB.bind('client-msg', (data, metadata) => received.push({ data, metadata }));
      chA.trigger('client-msg', { text: 'hi bob' });
      const got = await received.waitFor(() => true, { what: 'client-msg with metadata' });
      assert.deepEqual(got.data, { text: 'hi bob' });
      assert.equal(got.metadata.user_id, 'alice');
    });

    it('client events are refused with pusher:error 4301 when the app disables them, and not delivered', async () => {
      const auth = sdkAuthOptions(daemon.sdk(NO_CLIENT_EVENTS_APP));
      const a = await client({ key: NO_CLIENT_EVENTS_APP.key, ...auth });
      const b = await client({ key: NO_CLIENT_EVENTS_APP.key, ...auth });
      const name = uniqueName('private-noclient');
      const { channel: chA } = await subscribePusherJs(a, name);
      const { inbox: inB } = await subscribePusherJs(b, name);
      const watch = watchPusherJs(a);
      chA.trigger('client-nope', { x: 1 });
      const err = await watch.errors.waitFor((e) => pusherJsErrorCode(e) === 4301, { what: 'pusher:error 4301' });
      assert.equal(typeof err.data.message, 'string');
      assert.equal(a.connection.state, 'connected');

      await daemon.sdk(NO_CLIENT_EVENTS_APP).trigger(name, 'barrier', {});
      await inB.waitFor((e) => e.event === 'barrier', { what: 'barrier at B' });
      assert.equal(inB.filter((e) => e.event === 'client-nope').length, 0);
    });

    it('client events on a public channel are refused with 4301', async () => {
      const name = uniqueName('public-noclient');
      const a = await client();
      const { channel } = await subscribePusherJs(a, name);
      const watch = watchPusherJs(a);
      channel.trigger('client-public', {});
      await watch.errors.waitFor((e) => pusherJsErrorCode(e) === 4301, { what: 'pusher:error 4301' });
      assert.equal(a.connection.state, 'connected');
    });

    it('a burst over 10 client events per second gets 4301 errors and is not all relayed', async () => {
      const name = uniqueName('private-burst');
      const a = await client(sdkAuthOptions(node));
      const b = await client(sdkAuthOptions(node));
      const { channel: chA } = await subscribePusherJs(a, name);
      const { inbox: inB } = await subscribePusherJs(b, name);
      const watch = watchPusherJs(a);
      const burst = 25; // even straddling a second boundary at most 20 can pass
      for (let i = 0; i < burst; i += 1) chA.trigger('client-burst', { i });
      await watch.errors.waitFor((e) => pusherJsErrorCode(e) === 4301, { what: 'a rate-limit 4301' });
      await node.trigger(name, 'barrier', {});
      await inB.waitFor((e) => e.event === 'barrier', { what: 'barrier at B' });
      const relayed = inB.filter((e) => e.event === 'client-burst').length;
      assert.ok(relayed >= 10 && relayed <= 20, `relayed ${relayed} of ${burst}`);
      assert.equal(a.connection.state, 'connected');
    });
  });

  // ------------------------------------------------------------------ cache channels

  describe('cache channels', () => {
    it('pusher-js gets pusher:cache_miss on an empty cache channel, then the last event on a later subscribe', async () => {
      const name = uniqueName('cache-vehicle');
      const first = await client();
      const { inbox: in1 } = await subscribePusherJs(first, name);
      await in1.waitFor((e) => e.event === 'pusher:cache_miss', { what: 'pusher:cache_miss' });

      await node.trigger(name, 'location', { lat: 1, lng: 2 });
      await node.trigger(name, 'location', { lat: 3, lng: 4 });
      await in1.waitFor((e) => e.event === 'location' && e.data.lat === 3, { what: 'second location live' });

      const second = await client();
      const { inbox: in2 } = await subscribePusherJs(second, name);
      const replay = await in2.waitFor((e) => e.event === 'location', { what: 'cached location' });
      assert.deepEqual(replay.data, { lat: 3, lng: 4 });
      const events = in2.items.map((e) => e.event);
      assert.equal(events.indexOf('pusher:subscription_succeeded'), 0, JSON.stringify(events));
      assert.equal(events.indexOf('location'), 1, JSON.stringify(events));
      assert.ok(!events.includes('pusher:cache_miss'), JSON.stringify(events));
    });

    it('a private-cache- channel replays the last Python SDK event and never a client event', async () => {
      const name = uniqueName('private-cache-sensor');
      const a = await client(sdkAuthOptions(node));
      const { channel: chA, inbox: inA } = await subscribePusherJs(a, name);
      await inA.waitFor((e) => e.event === 'pusher:cache_miss', { what: 'cache_miss' });
      await pyOk(daemon, [{ op: 'trigger', channels: [name], event: 'reading', data: { temp: 21.5 } }]);
      await inA.waitFor((e) => e.event === 'reading', { what: 'reading live' });
      // A witness subscribed before the client event proves the server relayed it before B joins.
      const witness = await client(sdkAuthOptions(node));
      const { inbox: inWitness } = await subscribePusherJs(witness, name);
      chA.trigger('client-note', { not: 'cached' });
      await inWitness.waitFor((e) => e.event === 'client-note', { what: 'client-note relayed' });

      const b = await client(sdkAuthOptions(node));
      const { inbox: inB } = await subscribePusherJs(b, name);
      const replay = await inB.waitFor((e) => e.event === 'reading', { what: 'cached reading' });
      assert.deepEqual(replay.data, { temp: 21.5 });
      await node.trigger(name, 'barrier', {});
      await inB.waitFor((e) => e.event === 'barrier', { what: 'barrier' });
      assert.equal(inB.filter((e) => e.event === 'client-note').length, 0);
    });

    it('a presence-cache- channel gives members and then the cache miss', async () => {
      const name = uniqueName('presence-cache-auction');
      const c = await member('bidder', { n: 1 });
      const { channel, inbox } = await subscribePusherJs(c, name);
      assert.equal(channel.members.count, 1);
      await inbox.waitFor((e) => e.event === 'pusher:cache_miss', { what: 'cache_miss' });
    });

    it('info=cache over REST: null when empty, then {event, data, ttl} for both SDKs', async () => {
      const name = uniqueName('cache-rest');
      const empty = await getJson(`/channels/${name}`, { info: 'cache' });
      assert.equal(empty.cache, null);

      await node.trigger(name, 'price', { usd: 10 });
      const body = await getJson(`/channels/${name}`, { info: 'cache' });
      assert.equal(body.cache.event, 'price');
      assert.deepEqual(JSON.parse(body.cache.data), { usd: 10 });
      assert.ok(body.cache.ttl > 0 && body.cache.ttl <= CACHE_TTL, `ttl ${body.cache.ttl}`);

      const [pyInfo] = await pyOk(daemon, [{ op: 'channel_info', channel: name, attributes: ['cache'] }]);
      assert.equal(pyInfo.cache.event, 'price');
      assert.deepEqual(JSON.parse(pyInfo.cache.data), { usd: 10 });
    });
  });
});
