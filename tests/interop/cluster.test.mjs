// A cluster of three real daemons on one real redis-server ([cluster] engine = "redis"), driven by
// unmodified official clients spread over the nodes: events, client events, presence (pusher-js and
// Laravel Echo), concurrent joins, webhooks (webhook_receiver.py, validated with both SDKs), cache
// channels, users (sendToUser, termination, watchlist), REST queries through every node and
// max_connections across nodes. PROTOCOL.md sections 3-8 and DESIGN.md "Cluster".
//
// The three nodes and the receiver are shared by the tests of this file; every test uses fresh
// channel and user names. Nothing here kills or restarts a node (see cluster_failover.test.mjs and
// cluster_redis.test.mjs).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import Echo from 'laravel-echo';

import {
  APP,
  byId,
  count,
  expectPusherJsRefused,
  Inbox,
  PusherJS,
  RawClient,
  RedisServer,
  appConfig,
  connectPusherJs,
  delay,
  disconnectPusherJs,
  pollUntil,
  pusherJsErrorCode,
  pusherJsOptions,
  pyOk,
  redisCluster,
  sdkAuthOptions,
  startNodes,
  stopNodes,
  subscribePusherJs,
  uniqueName,
  withTimeout,
  signInPusherJs,
  userInbox,
} from './helpers.mjs';
import { isHook, WebhookReceiver, webhookProblems } from './webhook_helpers.mjs';

const GRACE_S = 1;
const NODE_TIMEOUT_S = 2;
const LIMITED = Object.freeze({ id: '100031', key: 'limited-key', secret: 'limited-secret' });
const HOOKS = '/cluster';
// The webhooks that tell a channel's or a member's life (subscription_count, cache_miss and
// client_event are other matters).
const LIFECYCLE = ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed'];


describe('a cluster of three nodes on one Redis, with clients spread over the nodes', () => {
  let redis;
  let receiver;
  let nodes = [];
  let A;
  let B;
  let C;
  const sdk = new Map(); // node -> Node server SDK
  const clients = [];
  const raws = [];
  const echos = [];

  before(async () => {
    redis = await RedisServer.start();
    receiver = await WebhookReceiver.start();
    nodes = await startNodes(3, {
      apps: [
        appConfig({ webhooks: [{ url: receiver.url(HOOKS) }] }),
        appConfig({ ...LIMITED, max_connections: 2 }),
      ],
      cluster: redisCluster(redis, { prefix: `soketify-cluster-${process.pid}`, nodeTimeout: NODE_TIMEOUT_S }),
      webhooks: { grace: GRACE_S, batch_window_ms: 20 },
    });
    [A, B, C] = nodes;
    A.label = 'A';
    B.label = 'B';
    C.label = 'C';
    for (const n of nodes) sdk.set(n, n.sdk());
  });

  after(async () => {
    for (const c of clients) disconnectPusherJs(c);
    for (const e of echos) e.disconnect();
    for (const r of raws) r.terminate();
    await stopNodes(nodes);
    if (receiver) await receiver.stop();
    if (redis) await redis.close();
  });

  // ------------------------------------------------------------------ clients

  async function client(node, options = {}) {
    const c = await connectPusherJs(node, options);
    clients.push(c);
    return c;
  }

  async function raw(node, key = APP.key) {
    const r = await RawClient.connect(node, { key, label: `raw client on ${node.label}` });
    raws.push(r);
    return r;
  }

  /** pusher-js on `node` whose auth endpoint signs presence channels as `userId`. */
  function member(node, userId, userInfo = { name: userId }) {
    return client(node, sdkAuthOptions(sdk.get(node), { presenceData: () => ({ user_id: userId, user_info: userInfo }) }));
  }

  /** The subscribe frame a raw client sends (signed by the Node SDK for private-/presence-). */
  function subscribeFrame(r, channel, presenceData) {
    const data = { auth: '', channel };
    if (channel.startsWith('private-') || channel.startsWith('presence-')) {
      const signed = sdk.get(A).authorizeChannel(r.socketId, channel, presenceData);
      data.auth = signed.auth;
      if (signed.channel_data) data.channel_data = signed.channel_data;
    }
    return { event: 'pusher:subscribe', data };
  }

  async function rawSubscribe(r, channel, presenceData) {
    const from = r.messages.length;
    r.send(subscribeFrame(r, channel, presenceData));
    return r.waitEvent('pusher_internal:subscription_succeeded', { channel, from });
  }

  /** An Echo instance on `node` for the Laravel user {id, name}, once its pusher-js is connected. */
  async function echoFor(node, user) {
    const { channelAuthorization } = sdkAuthOptions(sdk.get(node), { presenceData: () => ({ user_id: user.id, user_info: user }) });
    const echo = new Echo({ broadcaster: 'pusher', Pusher: PusherJS, key: APP.key, ...pusherJsOptions(node), channelAuthorization });
    echos.push(echo);
    const { pusher } = echo.connector;
    await withTimeout(
      new Promise((resolve) => {
        if (pusher.connection.state === 'connected') resolve();
        pusher.connection.bind('connected', resolve);
      }),
      5000,
      `Echo for user ${user.id} on node ${node.label} to connect`,
    );
    return echo;
  }

  /**
   * pusher-js on `node` signed in as `userData`; resolves once signin_success came and
   * #server-to-user-{id} is subscribed. {c, watch, watchlist (Inbox of online/offline events)}.
   */
  async function signedIn(node, userData) {
    const c = await client(node, sdkAuthOptions(sdk.get(node), { userData: () => userData }));
    return { c, ...(await signInPusherJs(c, userData.id)) };
  }


  async function getJson(node, path, params) {
    const res = await sdk.get(node).get({ path, params });
    assert.equal(res.status, 200, `GET ${path} through node ${node.label}`);
    return res.json();
  }

  // ------------------------------------------------------------------ webhook barriers

  function assertValid(webhook) {
    assert.deepEqual(webhookProblems(webhook), [], `webhook #${webhook.seq}: ${webhook.body}`);
  }

  /**
   * Every webhook event queued in Redis before this call has been claimed and delivered when this
   * resolves (as far as a barrier can tell): the channel_occupied of a fresh channel, queued after
   * them, is claimed no earlier; a second one, queued once the first arrived, gives the node that
   * claimed an earlier event time to deliver it.
   */
  async function occupiedBarrier() {
    for (const node of [A, C]) {
      const name = uniqueName('hook-barrier');
      const r = await raw(node);
      await r.subscribe(name);
      await receiver.waitEvent(HOOKS, isHook('channel_occupied', name), { what: `barrier ${name}` });
      r.terminate();
    }
  }

  /** Like occupiedBarrier, and after every channel_vacated / member_removed scheduled before it. */
  async function graceBarrier() {
    const name = uniqueName('grace-barrier');
    const r = await raw(B);
    await r.subscribe(name);
    r.send({ event: 'pusher:unsubscribe', data: { channel: name } });
    await receiver.waitEvent(HOOKS, isHook('channel_vacated', name), { timeout: GRACE_S * 1000 + 5000, what: `grace barrier ${name}` });
    r.terminate();
    await occupiedBarrier();
  }

  // ------------------------------------------------------------------ 1. events

  describe('events', () => {
    it('an event triggered through node A (Node SDK and Python SDK) reaches pusher-js subscribers on all three nodes exactly once', async () => {
      const name = uniqueName('cl-fanout');
      const subs = [];
      for (const node of nodes) subs.push(await subscribePusherJs(await client(node), name));

      await sdk.get(A).trigger(name, 'from-node', { via: 'node sdk' });
      await pyOk(A, [{ op: 'trigger', channels: [name], event: 'from-python', data: { via: 'python sdk' } }]);
      for (const [i, { inbox }] of subs.entries()) {
        const fromNode = await inbox.waitFor((e) => e.event === 'from-node', { what: `from-node on node ${nodes[i].label}` });
        assert.deepEqual(fromNode.data, { via: 'node sdk' });
        const fromPy = await inbox.waitFor((e) => e.event === 'from-python', { what: `from-python on node ${nodes[i].label}` });
        assert.deepEqual(fromPy.data, { via: 'python sdk' });
      }
      // Events of one node on one channel keep their order: after the barrier, nothing more comes.
      await sdk.get(A).trigger(name, 'barrier', {});
      for (const [i, { inbox }] of subs.entries()) {
        await inbox.waitFor((e) => e.event === 'barrier', { what: `barrier on node ${nodes[i].label}` });
        const got = inbox.items.map((e) => e.event).filter((e) => !e.startsWith('pusher'));
        assert.deepEqual(got, ['from-node', 'from-python', 'barrier'], `node ${nodes[i].label}`);
      }
    });

    it('with socket_id exclusion (both SDKs) the excluded socket on node B gets nothing; the others, on every node, get it once', async () => {
      const name = uniqueName('cl-except');
      const cA = await client(A);
      const cB = await client(B);
      const cB2 = await client(B);
      const cC = await client(C);
      const subs = new Map();
      for (const c of [cA, cB, cB2, cC]) subs.set(c, (await subscribePusherJs(c, name)).inbox);
      const excluded = cB.connection.socket_id;

      await sdk.get(A).trigger(name, 'not-for-b', { n: 1 }, { socket_id: excluded });
      await pyOk(A, [{ op: 'trigger', channels: [name], event: 'not-for-b-py', data: { n: 2 }, socket_id: excluded }]);
      await sdk.get(A).trigger(name, 'barrier', {});
      for (const [c, inbox] of subs) {
        await inbox.waitFor((e) => e.event === 'barrier', { what: `barrier for ${c.connection.socket_id}` });
        const got = inbox.items.map((e) => e.event).filter((e) => !e.startsWith('pusher'));
        const expected = c === cB ? ['barrier'] : ['not-for-b', 'not-for-b-py', 'barrier'];
        assert.deepEqual(got, expected, `socket ${c.connection.socket_id} (excluded: ${excluded})`);
      }
    });

    it('a client event sent on node B reaches subscribers on A and C once, never the sender', async () => {
      const name = uniqueName('private-cl-chat');
      const subs = new Map();
      for (const node of nodes) {
        const c = await client(node, sdkAuthOptions(sdk.get(node)));
        subs.set(node, await subscribePusherJs(c, name));
      }
      assert.ok(subs.get(B).channel.trigger('client-hello', { from: 'B' }));
      for (const node of [A, C]) {
        const got = await subs.get(node).inbox.waitFor((e) => e.event === 'client-hello', { what: `client-hello on node ${node.label}` });
        assert.deepEqual(got.data, { from: 'B' });
      }
      // The client event was published (A and C have it) before this barrier, through node B.
      await sdk.get(B).trigger(name, 'barrier', {});
      for (const node of nodes) {
        const { inbox } = subs.get(node);
        await inbox.waitFor((e) => e.event === 'barrier', { what: `barrier on node ${node.label}` });
        assert.equal(count(inbox.items, (e) => e.event === 'client-hello'), node === B ? 0 : 1, `node ${node.label}: ${JSON.stringify(inbox.items)}`);
      }
    });
  });

  // ------------------------------------------------------------------ 2. presence

  describe('presence', () => {
    it('Echo and pusher-js members on three nodes see the same member list, self included; joining/leaving arrive once', async () => {
      const room = uniqueName('cl-room');
      const channelName = `presence-${room}`;
      const taylor = { id: 1, name: 'Taylor' };
      const jess = { id: 2, name: 'Jess' };
      const ada = { id: 3, name: 'Ada' };

      const e1 = await echoFor(A, taylor);
      const log1 = new Inbox('taylor (Echo on A)');
      e1.join(room)
        .here((users) => log1.push({ kind: 'here', users }))
        .joining((user) => log1.push({ kind: 'joining', user }))
        .leaving((user) => log1.push({ kind: 'leaving', user }))
        .listen('.barrier', () => log1.push({ kind: 'barrier' }))
        .error((err) => log1.push({ kind: 'error', err }));
      const here1 = await log1.waitFor((e) => e.kind === 'here', { what: 'here for taylor' });
      assert.deepEqual(here1.users, [taylor]);

      const jessJs = await member(B, 2, jess);
      const { channel: jessChannel, inbox: jessInbox } = await subscribePusherJs(jessJs, channelName);
      assert.deepEqual(jessChannel.members.me, { id: 2, info: jess });
      assert.equal(jessChannel.members.count, 2);
      await log1.waitFor((e) => e.kind === 'joining', { what: 'joining of jess for taylor' });

      const e3 = await echoFor(C, ada);
      const log3 = new Inbox('ada (Echo on C)');
      e3.join(room).here((users) => log3.push({ kind: 'here', users }));
      const here3 = await log3.waitFor((e) => e.kind === 'here', { what: 'here for ada' });
      assert.deepEqual(byId(here3.users), [taylor, jess, ada], 'ada on C sees every member, herself included');

      await log1.waitFor((e) => e.kind === 'joining' && e.user.id === 3, { what: 'joining of ada for taylor' });
      await jessInbox.waitFor((e) => e.event === 'pusher:member_added', { what: 'member_added of ada for jess' });
      const jessSees = [];
      jessChannel.members.each((m) => jessSees.push(m.info));
      assert.deepEqual(byId(jessSees), [taylor, jess, ada], 'jess on B sees the same members');
      const taylorSees = [...here1.users, ...log1.filter((e) => e.kind === 'joining').map((e) => e.user)];
      assert.deepEqual(byId(taylorSees), [taylor, jess, ada], 'taylor on A sees the same members');

      e3.leave(room);
      const left = await log1.waitFor((e) => e.kind === 'leaving', { what: 'leaving of ada for taylor' });
      assert.deepEqual(left.user, ada);
      const removed = await jessInbox.waitFor((e) => e.event === 'pusher:member_removed', { what: 'member_removed of ada for jess' });
      assert.equal(removed.data.id, '3');

      await sdk.get(C).trigger(channelName, 'barrier', {});
      await log1.waitFor((e) => e.kind === 'barrier', { what: 'barrier for taylor' });
      await jessInbox.waitFor((e) => e.event === 'barrier', { what: 'barrier for jess' });
      assert.deepEqual(log1.filter((e) => e.kind === 'joining').map((e) => e.user.id), [2, 3], JSON.stringify(log1.items));
      assert.deepEqual(log1.filter((e) => e.kind === 'leaving').map((e) => e.user.id), [3], JSON.stringify(log1.items));
      assert.equal(count(log1.items, (e) => e.kind === 'error'), 0);
      assert.deepEqual(jessInbox.filter((e) => e.event === 'pusher:member_added').map((e) => e.data.id), ['3']);
      assert.deepEqual(jessInbox.filter((e) => e.event === 'pusher:member_removed').map((e) => e.data.id), ['3']);
      assert.equal(jessChannel.members.count, 2);
    });

    it('the same user connected through two nodes is one member: no member_removed until its last connection leaves', async () => {
      const name = uniqueName('presence-cl-dup');
      const { channel: obs, inbox } = await subscribePusherJs(await member(C, 'observer'), name);

      const dupA = await member(A, 'dup', { name: 'Dup' });
      await subscribePusherJs(dupA, name);
      await inbox.waitFor((e) => e.event === 'pusher:member_added', { what: 'member_added of dup' });
      const dupB = await member(B, 'dup', { name: 'Dup' });
      const { channel: dupBChannel } = await subscribePusherJs(dupB, name);
      assert.equal(dupBChannel.members.count, 2);
      for (const node of nodes) {
        assert.deepEqual(await getJson(node, `/channels/${name}`, { info: 'user_count,subscription_count' }),
          { occupied: true, user_count: 2, subscription_count: 3 }, `through node ${node.label}`);
      }
      await sdk.get(B).trigger(name, 'barrier-joined', {});
      await inbox.waitFor((e) => e.event === 'barrier-joined', { what: 'barrier after the second join' });
      assert.equal(count(inbox.items, (e) => e.event === 'pusher:member_added'), 1, JSON.stringify(inbox.items));

      // The connection on A leaves: dup stays a member.
      disconnectPusherJs(dupA);
      await pollUntil(async () => (await getJson(A, `/channels/${name}`, { info: 'subscription_count' })).subscription_count === 2,
        { what: 'subscription_count 2 once dup left node A' });
      await sdk.get(A).trigger(name, 'barrier-left', {});
      await inbox.waitFor((e) => e.event === 'barrier-left', { what: 'barrier after one connection left' });
      assert.equal(count(inbox.items, (e) => e.event === 'pusher:member_removed'), 0, JSON.stringify(inbox.items));
      assert.equal(obs.members.count, 2);
      for (const node of nodes) {
        assert.deepEqual(await getJson(node, `/channels/${name}`, { info: 'user_count' }), { occupied: true, user_count: 2 });
      }

      // The last connection (on B) leaves: one member_removed.
      disconnectPusherJs(dupB);
      const removed = await inbox.waitFor((e) => e.event === 'pusher:member_removed', { what: 'member_removed of dup' });
      assert.deepEqual(removed.data, { id: 'dup', info: { name: 'Dup' } });
      await sdk.get(B).trigger(name, 'barrier-gone', {});
      await inbox.waitFor((e) => e.event === 'barrier-gone', { what: 'barrier after dup left' });
      assert.equal(count(inbox.items, (e) => e.event === 'pusher:member_removed'), 1, JSON.stringify(inbox.items));
      assert.equal(obs.members.count, 1);
    });

    it('user_count and /channels/{name}/users through every node (Node and Python SDKs) count distinct users exactly', async () => {
      const name = uniqueName('presence-cl-count');
      await subscribePusherJs(await member(A, 'u1'), name);
      await subscribePusherJs(await member(B, 'u2'), name);
      await subscribePusherJs(await member(C, 'u2'), name);
      await subscribePusherJs(await member(C, 'u3'), name);
      const expectedUsers = [{ id: 'u1' }, { id: 'u2' }, { id: 'u3' }];
      for (const node of nodes) {
        const users = await getJson(node, `/channels/${name}/users`);
        assert.deepEqual(byId(users.users), expectedUsers, `users through node ${node.label}`);
        assert.deepEqual(await getJson(node, `/channels/${name}`, { info: 'user_count,subscription_count' }),
          { occupied: true, user_count: 3, subscription_count: 4 }, `channel through node ${node.label}`);
        const [pyUsers, pyInfo] = await pyOk(node, [
          { op: 'users_info', channel: name },
          { op: 'channel_info', channel: name, attributes: ['user_count'] },
        ]);
        assert.deepEqual(byId(pyUsers.users), expectedUsers, `Python users_info through node ${node.label}`);
        assert.deepEqual(pyInfo, { occupied: true, user_count: 3 }, `Python channel_info through node ${node.label}`);
      }
    });
  });

  // ------------------------------------------------------------------ 3. concurrent joins

  it('concurrent first joins of one user on nodes A and B (5 rounds) give one member_added to the member on C and one member_added webhook', async () => {
    const rounds = 5;
    const observer = await raw(C);
    const twinA = await raw(A);
    const twinB = await raw(B);
    const channels = [];
    for (let round = 0; round < rounds; round += 1) {
      const name = uniqueName('presence-cl-race');
      channels.push(name);
      await rawSubscribe(observer, name, { user_id: 'observer' });
      const from = { a: twinA.messages.length, b: twinB.messages.length };
      // Both frames leave in the same tick.
      twinA.send(subscribeFrame(twinA, name, { user_id: 'twin', user_info: { round } }));
      twinB.send(subscribeFrame(twinB, name, { user_id: 'twin', user_info: { round } }));
      const [okA, okB] = await Promise.all([
        twinA.waitEvent('pusher_internal:subscription_succeeded', { channel: name, from: from.a }),
        twinB.waitEvent('pusher_internal:subscription_succeeded', { channel: name, from: from.b }),
      ]);
      for (const ok of [okA, okB]) {
        assert.deepEqual([...ok.data.presence.ids].sort(), ['observer', 'twin'], `round ${round}: ${ok.raw}`);
        assert.equal(ok.data.presence.count, 2, `round ${round}: ${ok.raw}`);
      }
      // Both joins ran in Redis: a later event reaches the observer after any member_added.
      await sdk.get(A).trigger(name, 'barrier', {});
      await observer.waitEvent('barrier', { channel: name });
      const added = observer.messages.filter((m) => m.event === 'pusher_internal:member_added' && m.channel === name);
      assert.equal(added.length, 1, `round ${round}: member_added frames ${JSON.stringify(added.map((m) => m.raw))}`);
      assert.equal(added[0].data.user_id, 'twin');
    }
    for (const name of channels) {
      await receiver.waitEvent(HOOKS, isHook('member_added', name, 'twin'), { what: `member_added webhook on ${name}` });
    }
    await occupiedBarrier();
    for (const name of channels) {
      const events = receiver.events(HOOKS, (e) => e.channel === name && e.name === 'member_added');
      assert.deepEqual(events.map((e) => e.user_id).sort(), ['observer', 'twin'], `${name}: ${JSON.stringify(events)}`);
    }
  });

  // ------------------------------------------------------------------ 4. webhooks

  describe('webhooks', () => {
    it('channel_occupied once and channel_vacated once with simultaneous first subscriptions and simultaneous last unsubscriptions on two nodes', async () => {
      const rounds = 3;
      const rA = await raw(A);
      const rB = await raw(B);
      const rC = await raw(C);
      const names = [];
      for (let round = 0; round < rounds; round += 1) {
        const name = uniqueName('cl-occupancy');
        names.push(name);
        const from = { a: rA.messages.length, b: rB.messages.length };
        rA.send(subscribeFrame(rA, name));
        rB.send(subscribeFrame(rB, name));
        await rA.waitEvent('pusher_internal:subscription_succeeded', { channel: name, from: from.a });
        await rB.waitEvent('pusher_internal:subscription_succeeded', { channel: name, from: from.b });
        // A third subscriber comes and goes on C meanwhile.
        await rC.subscribe(name);
        rC.send({ event: 'pusher:unsubscribe', data: { channel: name } });
        await rC.sync();
        rA.send({ event: 'pusher:unsubscribe', data: { channel: name } });
        rB.send({ event: 'pusher:unsubscribe', data: { channel: name } });
      }
      for (const name of names) {
        await receiver.waitEvent(HOOKS, isHook('channel_vacated', name), { timeout: GRACE_S * 1000 + 5000, what: `channel_vacated ${name}` });
      }
      await graceBarrier();
      for (const name of names) {
        const events = receiver.events(HOOKS, (e) => e.channel === name && LIFECYCLE.includes(e.name));
        assert.deepEqual(events.map((e) => e.name), ['channel_occupied', 'channel_vacated'], `${name}: ${JSON.stringify(events)}`);
      }
      for (const w of receiver.webhooks.filter((w) => w.events.some((e) => names.includes(e.channel)))) assertValid(w);
    });

    it('leaving on node A and subscribing on node B within the grace period gives no occupancy or member webhook at all (public and presence)', async (t) => {
      const publicName = uniqueName('cl-moving');
      const presenceName = uniqueName('presence-cl-moving');
      const leaver = await raw(A);
      await rawSubscribe(leaver, publicName);
      await rawSubscribe(leaver, presenceName, { user_id: 'mover' });
      await receiver.waitEvent(HOOKS, isHook('channel_occupied', publicName), { what: 'channel_occupied (public)' });
      await receiver.waitEvent(HOOKS, isHook('member_added', presenceName, 'mover'), { what: 'member_added (presence)' });
      await receiver.waitEvent(HOOKS, isHook('channel_occupied', presenceName), { what: 'channel_occupied (presence)' });
      const lifecycle = (name) => receiver.events(HOOKS, (e) => e.channel === name && LIFECYCLE.includes(e.name));
      const mark = (name) => lifecycle(name).length;
      const seen = { [publicName]: mark(publicName), [presenceName]: mark(presenceName) };

      const arriver = await raw(B);
      const left = Date.now();
      leaver.terminate();
      // The leave on A is done once the channel is empty cluster-wide.
      await pollUntil(async () => (await getJson(B, `/channels/${publicName}`)).occupied === false,
        { interval: 10, what: 'the public channel to be empty after A closed' });
      await rawSubscribe(arriver, publicName);
      await rawSubscribe(arriver, presenceName, { user_id: 'mover' });
      const back = Date.now() - left;
      assert.ok(back < GRACE_S * 1000 - 200, `moving took ${back} ms, not within the ${GRACE_S} s grace: test inconclusive`);

      await graceBarrier();
      for (const name of [publicName, presenceName]) {
        const later = lifecycle(name).slice(seen[name]);
        assert.deepEqual(later, [], `${name}: webhooks after moving from A to B within the grace`);
      }
      // subscription_count webhooks are not held back by the grace (a single node sends them too).
      const counts = receiver.events(HOOKS, (e) => e.channel === publicName && e.name === 'subscription_count');
      t.diagnostic(`subscription_count webhooks of ${publicName}: ${JSON.stringify(counts.map((e) => e.subscription_count))}`);
    });

    it('member_added and member_removed webhooks come once per user, whatever nodes its connections are on', async () => {
      const name = uniqueName('presence-cl-members');
      const u1 = await raw(A);
      const u2b = await raw(B);
      const u2c = await raw(C);
      const u3 = await raw(C);
      await rawSubscribe(u1, name, { user_id: 'u1' });
      const fromB = u2b.messages.length;
      const fromC = u2c.messages.length;
      u2b.send(subscribeFrame(u2b, name, { user_id: 'u2' }));
      u2c.send(subscribeFrame(u2c, name, { user_id: 'u2' }));
      await u2b.waitEvent('pusher_internal:subscription_succeeded', { channel: name, from: fromB });
      await u2c.waitEvent('pusher_internal:subscription_succeeded', { channel: name, from: fromC });
      await rawSubscribe(u3, name, { user_id: 'u3' });
      for (const user of ['u1', 'u2', 'u3']) {
        await receiver.waitEvent(HOOKS, isHook('member_added', name, user), { what: `member_added ${user}` });
      }
      // u2 leaves B and C at once, then u3 and u1.
      u2b.send({ event: 'pusher:unsubscribe', data: { channel: name } });
      u2c.send({ event: 'pusher:unsubscribe', data: { channel: name } });
      u3.terminate();
      u1.terminate();
      await receiver.waitEvent(HOOKS, isHook('channel_vacated', name), { timeout: GRACE_S * 1000 + 5000, what: 'channel_vacated' });
      await graceBarrier();
      const events = receiver.events(HOOKS, (e) => e.channel === name);
      for (const user of ['u1', 'u2', 'u3']) {
        assert.equal(count(events, isHook('member_added', name, user)), 1, `member_added ${user}: ${JSON.stringify(events)}`);
        assert.equal(count(events, isHook('member_removed', name, user)), 1, `member_removed ${user}: ${JSON.stringify(events)}`);
      }
      assert.equal(count(events, (e) => e.name === 'channel_occupied'), 1, JSON.stringify(events));
      assert.equal(count(events, (e) => e.name === 'channel_vacated'), 1, JSON.stringify(events));
      for (const w of receiver.webhooks.filter((w) => w.events.some((e) => e.channel === name))) assertValid(w);
    });
  });

  // ------------------------------------------------------------------ 5. cache channels

  describe('cache channels', () => {
    it('an event triggered through node A while nobody is subscribed is replayed to a later subscriber on node B', async () => {
      const name = uniqueName('cache-cl-replay');
      await sdk.get(A).trigger(name, 'location', { lat: 52.5, lng: 13.4 });
      const { inbox } = await subscribePusherJs(await client(B), name);
      const replay = await inbox.waitFor((e) => e.event === 'location' || e.event === 'pusher:cache_miss', { what: 'the cached event' });
      assert.equal(replay.event, 'location', JSON.stringify(inbox.items));
      assert.deepEqual(replay.data, { lat: 52.5, lng: 13.4 });
    });

    it('info=cache on /channels/{name} answers the same through every node (Node and Python SDKs)', async () => {
      const name = uniqueName('cache-cl-info');
      await sdk.get(B).trigger(name, 'price', { usd: 10 });
      const answers = [];
      for (const node of nodes) {
        const body = await getJson(node, `/channels/${name}`, { info: 'cache' });
        const [py] = await pyOk(node, [{ op: 'channel_info', channel: name, attributes: ['cache'] }]);
        answers.push({ node: node.label, body }, { node: `${node.label} (Python)`, body: py });
      }
      const first = answers[0].body;
      assert.equal(first.cache.event, 'price', JSON.stringify(first));
      assert.deepEqual(JSON.parse(first.cache.data), { usd: 10 });
      for (const { node, body } of answers) {
        assert.deepEqual({ ...body, cache: { ...body.cache, ttl: undefined } }, { ...first, cache: { ...first.cache, ttl: undefined } }, `through node ${node}`);
        assert.ok(Math.abs(body.cache.ttl - first.cache.ttl) <= 1, `ttl through ${node}: ${body.cache.ttl} vs ${first.cache.ttl}`);
      }
    });

    it('a miss gives one cache_miss webhook even with subscribers on all three nodes', async () => {
      const name = uniqueName('cache-cl-miss');
      const subs = await Promise.all(nodes.map(async (node) => subscribePusherJs(await client(node), name)));
      for (const [i, { inbox }] of subs.entries()) {
        await inbox.waitFor((e) => e.event === 'pusher:cache_miss', { what: `pusher:cache_miss on node ${nodes[i].label}` });
      }
      const { webhook } = await receiver.waitEvent(HOOKS, isHook('cache_miss', name), { what: 'cache_miss webhook' });
      assertValid(webhook);
      const late = await subscribePusherJs(await client(C), name);
      await late.inbox.waitFor((e) => e.event === 'pusher:cache_miss', { what: 'pusher:cache_miss for a fourth subscriber' });
      await occupiedBarrier();
      const misses = receiver.events(HOOKS, isHook('cache_miss', name));
      assert.equal(misses.length, 1, `cache_miss webhooks: ${JSON.stringify(misses)}`);
    });
  });

  // ------------------------------------------------------------------ 6. users

  describe('users', () => {
    it('sendToUser (Node SDK) through node A reaches the user signed in on node B', async () => {
      const id = uniqueName('cl-target');
      const { c } = await signedIn(B, { id });
      const inbox = userInbox(c, 'notice');
      const res = await sdk.get(A).sendToUser(id, 'notice', { from: 'A' });
      assert.equal(res.status, 200);
      assert.deepEqual(await inbox.waitFor(() => true, { what: 'notice on node B' }), { from: 'A' });
      await sdk.get(A).sendToUser(id, 'notice', { from: 'A', barrier: true });
      await inbox.waitFor((d) => d.barrier, { what: 'second notice' });
      assert.deepEqual(inbox.items, [{ from: 'A' }, { from: 'A', barrier: true }]);
    });

    it('terminateUserConnections through node A closes the user\'s connections on B and C with 4009', async () => {
      const victim = uniqueName('cl-victim');
      const survivor = uniqueName('cl-survivor');
      const onB = await signedIn(B, { id: victim });
      const onC = await signedIn(C, { id: victim });
      const s = await signedIn(C, { id: survivor });
      const res = await sdk.get(A).terminateUserConnections(victim);
      assert.equal(res.status, 200);
      for (const [label, { c, watch }] of [['B', onB], ['C', onC]]) {
        await watch.errors.waitFor((e) => pusherJsErrorCode(e) === 4009, { what: `error 4009 on node ${label}` });
        await watch.states.waitFor((st) => st === 'disconnected', { what: `disconnected on node ${label}` });
        assert.equal(c.connection.state, 'disconnected');
      }
      const inbox = userInbox(s.c, 'still-here');
      await sdk.get(A).sendToUser(survivor, 'still-here', {});
      await inbox.waitFor(() => true, { what: 'event for the survivor on C' });
      assert.equal(s.c.connection.state, 'connected');
      assert.deepEqual(s.watch.states.items, []);
      for (const { watch } of [onB, onC]) assert.ok(!watch.states.items.includes('connecting'), `states: ${watch.states.items}`);
    });

    it('watchlist: a watcher on A gets online when the user signs in on B, offline only when its last connection (on C) closes', async () => {
      const watched = uniqueName('cl-watched');
      const watcher = await signedIn(A, { id: uniqueName('cl-watcher'), watchlist: [watched] });
      const initial = await watcher.watchlist.waitFor(() => true, { what: 'initial watchlist event' });
      assert.deepEqual(initial, { name: 'offline', user_ids: [watched] });

      const from = watcher.watchlist.items.length;
      const onB = await signedIn(B, { id: watched });
      const online = await watcher.watchlist.waitFor((e) => e.name === 'online', { what: 'online', from });
      assert.deepEqual(online.user_ids, [watched]);

      // A second connection on C, then the one on B leaves: still online.
      const onC = await raw(C);
      onC.send({ event: 'pusher:signin', data: sdk.get(C).authenticateUser(onC.socketId, { id: watched }) });
      await onC.waitEvent('pusher:signin_success');
      const probe = uniqueName('cl-watch-probe');
      await subscribePusherJs(onB.c, probe);
      disconnectPusherJs(onB.c);
      await pollUntil(async () => (await getJson(B, `/channels/${probe}`)).occupied === false, { what: 'node B to handle the close' });
      // Through B, after its sign-out of that connection: the watcher hears this after any offline.
      const barrier = userInbox(watcher.c, 'barrier');
      await sdk.get(B).sendToUser(watcher.c.user.user_data.id, 'barrier', {});
      await barrier.waitFor(() => true, { what: 'barrier for the watcher' });
      assert.deepEqual(watcher.watchlist.items.slice(from), [{ name: 'online', user_ids: [watched] }]);

      onC.ws.close(1000);
      await onC.waitClose();
      const offline = await watcher.watchlist.waitFor((e) => e.name === 'offline', { what: 'offline', from });
      assert.deepEqual(offline.user_ids, [watched]);
    });

    it('a watcher signing in on A gets the current online state of a user signed in on B', async () => {
      const present = uniqueName('cl-present');
      const absent = uniqueName('cl-absent');
      await signedIn(B, { id: present });
      const watcher = await signedIn(A, { id: uniqueName('cl-late-watcher'), watchlist: [present, absent] });
      const online = await watcher.watchlist.waitFor((e) => e.name === 'online', { what: 'online' });
      const offline = await watcher.watchlist.waitFor((e) => e.name === 'offline', { what: 'offline' });
      assert.deepEqual(online.user_ids, [present]);
      assert.deepEqual(offline.user_ids, [absent]);
    });
  });

  // ------------------------------------------------------------------ 7. REST queries

  describe('REST queries', () => {
    it('/channels (filter_by_prefix, info=user_count) and /channels/{name} answer the same through every node (Node and Python SDKs)', async () => {
      const tag = uniqueName('clq');
      const presence = `presence-${tag}`;
      const busy = `${tag}-busy`;
      const empty = `${tag}-empty`;
      await subscribePusherJs(await member(A, 'p1'), presence);
      await subscribePusherJs(await member(B, 'p2'), presence);
      await subscribePusherJs(await member(C, 'p2'), presence);
      await subscribePusherJs(await client(A), busy);
      await subscribePusherJs(await client(C), busy);
      await subscribePusherJs(await client(C), busy);

      for (const node of nodes) {
        const where = `through node ${node.label}`;
        assert.deepEqual(await getJson(node, '/channels', { filter_by_prefix: presence, info: 'user_count' }),
          { channels: { [presence]: { user_count: 2 } } }, where);
        assert.deepEqual(await getJson(node, '/channels', { filter_by_prefix: tag }), { channels: { [busy]: {} } }, where);
        assert.deepEqual(await getJson(node, `/channels/${presence}`, { info: 'user_count,subscription_count' }),
          { occupied: true, user_count: 2, subscription_count: 3 }, where);
        assert.deepEqual(await getJson(node, `/channels/${busy}`, { info: 'subscription_count' }),
          { occupied: true, subscription_count: 3 }, where);
        assert.deepEqual(await getJson(node, `/channels/${empty}`), { occupied: false }, where);
        const [pyList, pyPresence, pyBusy] = await pyOk(node, [
          { op: 'channels_info', prefix_filter: presence, attributes: ['user_count'] },
          { op: 'channel_info', channel: presence, attributes: ['user_count', 'subscription_count'] },
          { op: 'channel_info', channel: busy, attributes: ['subscription_count'] },
        ]);
        assert.deepEqual(pyList, { channels: { [presence]: { user_count: 2 } } }, `Python ${where}`);
        assert.deepEqual(pyPresence, { occupied: true, user_count: 2, subscription_count: 3 }, `Python ${where}`);
        assert.deepEqual(pyBusy, { occupied: true, subscription_count: 3 }, `Python ${where}`);
      }
    });

    it('info=subscription_count (and user_count) on a trigger counts subscribers on every node', async () => {
      const tag = uniqueName('clt');
      const presence = `presence-${tag}`;
      const plain = `${tag}-plain`;
      await subscribePusherJs(await member(A, 'q1'), presence);
      await subscribePusherJs(await member(C, 'q2'), presence);
      await subscribePusherJs(await member(C, 'q2'), presence);
      await subscribePusherJs(await client(A), plain);
      await subscribePusherJs(await client(B), plain);
      for (const node of nodes) {
        const res = await sdk.get(node).trigger([presence, plain], 'counted', {}, { info: 'subscription_count,user_count' });
        assert.equal(res.status, 200);
        assert.deepEqual(await res.json(), {
          channels: {
            [presence]: { subscription_count: 3, user_count: 2 },
            [plain]: { subscription_count: 2 },
          },
        }, `trigger through node ${node.label}`);
      }
    });
  });

  // ------------------------------------------------------------------ 8. max_connections

  it('max_connections = 2 is cluster-wide: clients on A and B connect, a third on C (a second later) is refused with 4004', async () => {
    const first = await raw(A, LIMITED.key);
    const second = await raw(B, LIMITED.key);
    // The count spreads with the heartbeats (at most a second old).
    await delay(1500);
    const third = RawClient.open(C.wsUrl(LIMITED.key), 'third raw client on C');
    raws.push(third);
    const error = await third.waitEvent('pusher:error', { timeout: 5000 }).catch((err) => err);
    const closed = await third.waitClose();
    assert.equal(error?.data?.code, 4004, `first frame: ${JSON.stringify(third.messages.map((m) => m.raw))}`);
    assert.equal(closed.code, 4004);

    await expectPusherJsRefused(C, LIMITED.key, 4004, clients);

    for (const r of [first, second]) {
      await r.sync();
      assert.equal(r.close, null, `${r.label} is still connected`);
    }
  });
});
