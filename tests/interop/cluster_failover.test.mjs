// A node of a three-node cluster killed with kill -9 (DESIGN.md "Cluster": heartbeats, reaping of
// dead nodes, webhooks with the grace): the surviving nodes remove what it held (member_removed to
// the members, offline to the watchers, REST answers, member_removed / channel_vacated webhooks once),
// a restart of that node does not bring its members back, and a pusher-js client whose node died
// and that reconnects by itself to another node before the dead one is reaped is never announced
// as gone. Each describe has its own redis-server, nodes and webhook receiver.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import {
  Daemon,
  byId,
  count,
  Inbox,
  RawClient,
  RedisServer,
  TcpForwarder,
  appConfig,
  connectPusherJs,
  disconnectPusherJs,
  pollUntil,
  pyOk,
  redisCluster,
  sdkAuthOptions,
  startNodes,
  stopNodes,
  subscribePusherJs,
  uniqueName,
  watchPusherJs,
} from './helpers.mjs';
import { isHook, webhookProblems, WebhookReceiver } from './webhook_helpers.mjs';

const HOOKS = '/failover';
const LIFECYCLE = ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed'];


/** What the tests of one describe share: redis, receiver, nodes and every client to clean up. */
function fixture() {
  const f = { redis: null, receiver: null, nodes: [], restarted: [], clients: [], raws: [], forwarders: [], sdk: new Map() };
  f.start = async ({ nodeTimeout, grace, prefix }) => {
    f.redis = await RedisServer.start();
    f.receiver = await WebhookReceiver.start();
    f.grace = grace;
    f.nodeTimeout = nodeTimeout;
    f.nodes = await startNodes(3, {
      apps: [appConfig({ webhooks: [{ url: f.receiver.url(HOOKS), event_types: [...LIFECYCLE] }] })],
      cluster: redisCluster(f.redis, { prefix: `${prefix}-${process.pid}`, nodeTimeout }),
      webhooks: { grace, batch_window_ms: 20 },
    });
    f.nodes.forEach((n, i) => {
      n.label = 'ABC'[i];
      f.sdk.set(n, n.sdk());
    });
    return f.nodes;
  };
  f.cleanup = async () => {
    for (const c of f.clients) disconnectPusherJs(c);
    for (const r of f.raws) r.terminate();
    for (const fwd of f.forwarders) await fwd.stop();
    await Promise.all(f.restarted.map((n) => n.stop()));
    await stopNodes(f.nodes);
    if (f.receiver) await f.receiver.stop();
    if (f.redis) await f.redis.close();
  };
  f.client = async (node, options = {}) => {
    const c = await connectPusherJs(node, options);
    f.clients.push(c);
    return c;
  };
  f.member = (node, userId, options = {}) =>
    f.client(node, { ...sdkAuthOptions(f.sdk.get(node) ?? node.sdk(), { presenceData: () => ({ user_id: userId, user_info: { name: userId } }) }), ...options });
  f.raw = async (node) => {
    const r = await RawClient.connect(node, { label: `raw client on ${node.label}` });
    f.raws.push(r);
    return r;
  };
  f.rawSubscribe = async (r, channel, presenceData) => {
    const data = { auth: '', channel };
    if (channel.startsWith('presence-')) {
      const signed = f.nodes[0].sdk().authorizeChannel(r.socketId, channel, presenceData);
      Object.assign(data, { auth: signed.auth, channel_data: signed.channel_data });
    }
    const from = r.messages.length;
    r.send({ event: 'pusher:subscribe', data });
    return r.waitEvent('pusher_internal:subscription_succeeded', { channel, from });
  };
  f.rawSignIn = async (r, userData) => {
    r.send({ event: 'pusher:signin', data: f.nodes[0].sdk().authenticateUser(r.socketId, userData) });
    return r.waitEvent('pusher:signin_success');
  };
  /** Webhook barriers, as in cluster.test.mjs: channel_occupied of fresh channels, in turn. */
  f.occupiedBarrier = async (nodes) => {
    for (const node of nodes) {
      const name = uniqueName('hook-barrier');
      const r = await f.raw(node);
      await r.subscribe(name);
      await f.receiver.waitEvent(HOOKS, isHook('channel_occupied', name), { what: `barrier ${name}` });
      r.terminate();
    }
  };
  f.graceBarrier = async (nodes) => {
    const name = uniqueName('grace-barrier');
    const r = await f.raw(nodes[0]);
    await r.subscribe(name);
    r.send({ event: 'pusher:unsubscribe', data: { channel: name } });
    await f.receiver.waitEvent(HOOKS, isHook('channel_vacated', name), { timeout: f.grace * 1000 + 5000, what: `grace barrier ${name}` });
    r.terminate();
    await f.occupiedBarrier(nodes);
  };
  return f;
}

/** Record pusher-js presence events of `channel` with the time they arrived. */
function timedMembers(channel, label) {
  const inbox = new Inbox(label);
  channel.bind_global((event, data) => inbox.push({ event, data, at: Date.now() }));
  return inbox;
}

describe('kill -9 of a node holding presence members, signed-in users and channels', () => {
  const NODE_TIMEOUT_S = 2;
  const GRACE_S = 1;
  const f = fixture();
  let A;
  let B;
  let C;
  let killedAt;
  const shared = uniqueName('presence-kill-shared'); // members on A, B and C
  const onlyC = uniqueName('presence-kill-only-c'); // held by C alone
  const publicOnlyC = uniqueName('kill-public-only-c'); // held by C alone
  const publicShared = uniqueName('kill-public-shared'); // on A and C
  const obs = {}; // node label -> {channel, inbox} of the observers on A and B
  let watcher;
  let hooksBeforeKill;
  let restDropped;

  before(async () => {
    [A, B, C] = await f.start({ nodeTimeout: NODE_TIMEOUT_S, grace: GRACE_S, prefix: 'soketify-kill' });
    for (const node of [A, B]) {
      const c = await f.member(node, `obs-${node.label}`);
      const { channel } = await subscribePusherJs(c, shared);
      obs[node.label] = { channel, inbox: timedMembers(channel, `observer on ${node.label}`) };
    }
    // The victim: pusher-js on C, signed in, in two presence channels.
    const victim = await f.member(C, 'victim', sdkAuthOptions(C.sdk(), {
      presenceData: () => ({ user_id: 'victim', user_info: { name: 'victim' } }),
      userData: () => ({ id: 'victim' }),
    }));
    const victimWatch = watchPusherJs(victim);
    victim.signin();
    await victimWatch.messages.waitFor((m) => m.event === 'pusher:signin_success', { what: 'victim signed in' });
    await subscribePusherJs(victim, shared);
    await subscribePusherJs(victim, onlyC);
    // "split": one connection on A and one on C; it must survive the kill.
    for (const node of [A, C]) {
      const r = await f.raw(node);
      await f.rawSignIn(r, { id: 'split' });
      await f.rawSubscribe(r, shared, { user_id: 'split' });
    }
    const rc = await f.raw(C);
    await rc.subscribe(publicOnlyC);
    await rc.subscribe(publicShared);
    await (await f.raw(A)).subscribe(publicShared);
    // The watcher on A watches both.
    const wc = await f.client(A, sdkAuthOptions(A.sdk(), { userData: () => ({ id: 'watcher', watchlist: ['victim', 'split'] }) }));
    watcher = new Inbox('watchlist of the watcher');
    wc.user.watchlist.bind('online', (e) => watcher.push({ name: 'online', user_ids: e.user_ids, at: Date.now() }));
    wc.user.watchlist.bind('offline', (e) => watcher.push({ name: 'offline', user_ids: e.user_ids, at: Date.now() }));
    wc.signin();
    const initial = await watcher.waitFor(() => true, { what: 'initial watchlist state' });
    assert.deepEqual(initial.name === 'online' && [...initial.user_ids].sort(), ['split', 'victim'], JSON.stringify(watcher.items));

    // Every webhook of the set-up has arrived.
    for (const [name, channel, user] of [
      ['member_added', shared, 'victim'], ['member_added', shared, 'split'], ['member_added', onlyC, 'victim'],
      ['channel_occupied', publicOnlyC], ['channel_occupied', publicShared],
    ]) {
      await f.receiver.waitEvent(HOOKS, isHook(name, channel, user), { what: `${name} ${channel} ${user ?? ''}` });
    }
    await f.occupiedBarrier([A, B]);
    hooksBeforeKill = f.receiver.webhooks.length;

    killedAt = Date.now();
    const exit = await C.kill9();
    assert.equal(exit.signal, 'SIGKILL');
    // The victim's user went away with its node (it does not come back through the restarted C).
    disconnectPusherJs(victim);
    // When REST through A and through B stops listing the victim (ms after the kill), or the error.
    restDropped = Promise.all([A, B].map((node) => pollUntil(async () => {
      const res = await f.sdk.get(node).get({ path: `/channels/${shared}/users` });
      const { users } = await res.json();
      return !users.some((u) => u.id === 'victim');
    }, { timeout: (NODE_TIMEOUT_S + 4) * 1000, interval: 50, what: `victim gone from the users through ${node.label}` })
      .then(() => Date.now() - killedAt))).catch((err) => err);
  });

  after(() => f.cleanup());

  it(`the members on A and B get member_removed for the killed node's user within node_timeout + 2 s, and nothing for a user still connected through A`, async (t) => {
    const limit = (NODE_TIMEOUT_S + 2) * 1000;
    for (const label of ['A', 'B']) {
      const { inbox } = obs[label];
      const removed = await inbox.waitFor((e) => e.event === 'pusher:member_removed', {
        timeout: limit - (Date.now() - killedAt) + 200, what: `member_removed on ${label}`,
      });
      assert.equal(removed.data.id, 'victim');
      t.diagnostic(`member_removed on ${label} ${removed.at - killedAt} ms after the kill`);
      assert.ok(removed.at - killedAt <= limit, `member_removed on ${label} came ${removed.at - killedAt} ms after the kill`);
    }
    await f.sdk.get(A).trigger(shared, 'barrier', {});
    for (const label of ['A', 'B']) {
      const { inbox, channel } = obs[label];
      await inbox.waitFor((e) => e.event === 'barrier', { what: `barrier on ${label}` });
      const removed = inbox.filter((e) => e.event === 'pusher:member_removed').map((e) => e.data.id);
      assert.deepEqual(removed, ['victim'], `member_removed on ${label}`);
      const members = [];
      channel.members.each((m) => members.push(m.id));
      assert.deepEqual(members.sort(), ['obs-A', 'obs-B', 'split'], `members seen on ${label}`);
    }
  });

  it('REST through A and B (Node and Python SDKs) drops the killed node\'s members and subscribers within node_timeout + 2 s', async (t) => {
    const dropped = await restDropped;
    if (dropped instanceof Error) throw dropped;
    t.diagnostic(`REST through A / B stopped listing the victim ${dropped.join(' / ')} ms after the kill`);
    for (const ms of dropped) assert.ok(ms <= (NODE_TIMEOUT_S + 2) * 1000, `REST dropped the victim ${ms} ms after the kill`);
    for (const node of [A, B]) {
      const get = async (path, params) => (await f.sdk.get(node).get({ path, params })).json();
      const where = `through ${node.label}`;
      assert.deepEqual(byId((await get(`/channels/${shared}/users`)).users), [{ id: 'obs-A' }, { id: 'obs-B' }, { id: 'split' }], where);
      assert.deepEqual(await get(`/channels/${shared}`, { info: 'user_count,subscription_count' }),
        { occupied: true, user_count: 3, subscription_count: 3 }, where);
      assert.deepEqual(await get(`/channels/${onlyC}`, { info: 'user_count' }), { occupied: false, user_count: 0 }, where);
      assert.deepEqual(await get(`/channels/${publicOnlyC}`), { occupied: false }, where);
      assert.deepEqual(await get(`/channels/${publicShared}`, { info: 'subscription_count' }), { occupied: true, subscription_count: 1 }, where);
      const [pyUsers, pyInfo] = await pyOk(node, [
        { op: 'users_info', channel: shared },
        { op: 'channel_info', channel: onlyC, attributes: ['user_count'] },
      ]);
      assert.deepEqual(byId(pyUsers.users), [{ id: 'obs-A' }, { id: 'obs-B' }, { id: 'split' }], `Python ${where}`);
      assert.deepEqual(pyInfo, { occupied: false, user_count: 0 }, `Python ${where}`);
    }
  });

  it('the watcher on A gets offline for the user signed in only on the killed node, within node_timeout + 2 s', async (t) => {
    const limit = (NODE_TIMEOUT_S + 2) * 1000;
    const offline = await watcher.waitFor((e) => e.name === 'offline', { timeout: limit - (Date.now() - killedAt) + 200, what: 'offline' });
    assert.deepEqual(offline.user_ids, ['victim']);
    t.diagnostic(`offline ${offline.at - killedAt} ms after the kill`);
    assert.ok(offline.at - killedAt <= limit, `offline came ${offline.at - killedAt} ms after the kill`);
    assert.equal(count(watcher.items, (e) => e.name === 'offline'), 1, JSON.stringify(watcher.items));
  });

  it('the receiver gets member_removed and channel_vacated of what only the killed node held within node_timeout + grace + 1 s, exactly once', async (t) => {
    const limit = (NODE_TIMEOUT_S + GRACE_S + 1) * 1000;
    const expected = [
      ['member_removed', shared, 'victim'],
      ['member_removed', onlyC, 'victim'],
      ['channel_vacated', onlyC],
      ['channel_vacated', publicOnlyC],
    ];
    for (const [name, channel, user] of expected) {
      const { webhook } = await f.receiver.waitEvent(HOOKS, isHook(name, channel, user), {
        timeout: limit - (Date.now() - killedAt) + 500, from: hooksBeforeKill, what: `${name} ${channel}`,
      });
      t.diagnostic(`${name} ${channel} webhook ${Math.round(webhook.received_ms - killedAt)} ms after the kill`);
      assert.ok(webhook.received_ms - killedAt <= limit, `${name} ${channel} came ${Math.round(webhook.received_ms - killedAt)} ms after the kill`);
      assert.ok(webhook.received_ms - killedAt >= GRACE_S * 1000, `${name} ${channel} came ${Math.round(webhook.received_ms - killedAt)} ms after the kill, before the grace`);
      assert.deepEqual(webhookProblems(webhook), [], webhook.body);
    }
    await f.graceBarrier([A, B]);
    const mine = [shared, onlyC, publicOnlyC, publicShared];
    const after = f.receiver.webhooks.slice(hooksBeforeKill)
      .filter((w) => w.status === 200)
      .flatMap((w) => w.events)
      .filter((e) => mine.includes(e.channel))
      .map((e) => [e.name, e.channel, e.user_id].filter(Boolean).join(' '));
    assert.deepEqual(after.sort(), expected.map((e) => e.join(' ')).sort(), 'webhooks after the kill');
  });

  it('restarting the killed node on the same config and state_dir does not bring its old members back', async () => {
    const again = await Daemon.start({ ...C.options, port: C.port });
    again.label = 'C (restarted)';
    f.restarted.push(again);
    const from = f.receiver.webhooks.length;
    await f.sdk.get(A).trigger(shared, 'barrier-restart', {});
    for (const node of [again, A, B]) {
      const sdk = node.sdk();
      const users = await (await sdk.get({ path: `/channels/${shared}/users` })).json();
      assert.deepEqual(byId(users.users), [{ id: 'obs-A' }, { id: 'obs-B' }, { id: 'split' }], `through ${node.label}`);
      assert.deepEqual(await (await sdk.get({ path: `/channels/${onlyC}`, params: { info: 'user_count' } })).json(),
        { occupied: false, user_count: 0 }, `through ${node.label}`);
      assert.deepEqual(await (await sdk.get({ path: `/channels/${publicOnlyC}` })).json(), { occupied: false }, `through ${node.label}`);
    }
    // A barrier through the restarted node reaches the observers after anything its start caused.
    await again.sdk().trigger(shared, 'barrier-restarted', {});
    for (const label of ['A', 'B']) {
      const { inbox, channel } = obs[label];
      await inbox.waitFor((e) => e.event === 'barrier-restarted', { what: `barrier on ${label}` });
      assert.equal(count(inbox.items, (e) => e.event === 'pusher:member_added' && e.at >= killedAt), 0, JSON.stringify(inbox.items));
      assert.equal(channel.members.count, 3);
    }
    await f.occupiedBarrier([again, A]);
    const back = f.receiver.events(HOOKS, (e) => [shared, onlyC, publicOnlyC].includes(e.channel))
      .filter((e) => e.name === 'member_added' || e.name === 'channel_occupied');
    const beforeKill = f.receiver.webhooks.slice(0, hooksBeforeKill).filter((w) => w.status === 200).flatMap((w) => w.events)
      .filter((e) => [shared, onlyC, publicOnlyC].includes(e.channel) && (e.name === 'member_added' || e.name === 'channel_occupied'));
    assert.equal(back.length, beforeKill.length, `member_added / channel_occupied after the restart: ${JSON.stringify(f.receiver.webhooks.slice(from).flatMap((w) => w.events))}`);
    assert.ok(again.running);
  });
});

describe('a pusher-js client whose node died reconnects by itself to another node before the dead node is reaped', () => {
  // node_timeout 3: pusher-js retries one second after an abnormal close, well before the reaping.
  const NODE_TIMEOUT_S = 3;
  const GRACE_S = 1;
  const f = fixture();
  let A;
  let B;
  let C;

  before(async () => {
    [A, B, C] = await f.start({ nodeTimeout: NODE_TIMEOUT_S, grace: GRACE_S, prefix: 'soketify-move' });
  });

  after(() => f.cleanup());

  it('the other members see no member_removed (nor a second member_added), and no member webhook is sent', async (t) => {
    const name = uniqueName('presence-move');
    const observer = await f.member(A, 'observer');
    const { channel: obsChannel, inbox: obsInbox } = await subscribePusherJs(observer, name);

    // The mover's wsPort is a forwarder (a load balancer) that sends it to C, then to B.
    const fwd = await TcpForwarder.start(C.port);
    f.forwarders.push(fwd);
    const mover = await f.member(C, 'mover', { wsPort: fwd.port });
    const moverWatch = watchPusherJs(mover);
    const { inbox: moverInbox } = await subscribePusherJs(mover, name);
    const firstSocket = mover.connection.socket_id;
    await obsInbox.waitFor((e) => e.event === 'pusher:member_added', { what: 'member_added of the mover' });
    await f.receiver.waitEvent(HOOKS, isHook('member_added', name, 'mover'), { what: 'member_added webhook' });
    const hooksBefore = f.receiver.events(HOOKS, (e) => e.channel === name).length;
    const moverSeen = moverInbox.items.length;

    fwd.target = B.port;
    const killedAt = Date.now();
    await C.kill9();

    // pusher-js notices, reconnects (through the forwarder, now to B) and subscribes again.
    await moverWatch.states.waitFor((s) => s === 'connecting', { what: 'mover connecting again' });
    await moverWatch.states.waitFor((s) => s === 'connected', { timeout: NODE_TIMEOUT_S * 1000, what: 'mover connected again' });
    await moverInbox.waitFor((e) => e.event === 'pusher:subscription_succeeded', { from: moverSeen, timeout: 3000, what: 'mover subscribed again' });
    const back = Date.now() - killedAt;
    assert.notEqual(mover.connection.socket_id, firstSocket);
    assert.equal(fwd.connections.at(-1).target, B.port, 'the second connection went to B');
    t.diagnostic(`the mover was subscribed again through B ${back} ms after the kill`);
    assert.ok(back < NODE_TIMEOUT_S * 1000 - 300, `the mover was back ${back} ms after the kill, not before the reaping: test inconclusive`);

    // The dead node is reaped: its subscription of the mover goes away.
    await pollUntil(async () => {
      const res = await f.sdk.get(A).get({ path: `/channels/${name}`, params: { info: 'subscription_count' } });
      return (await res.json()).subscription_count === 2;
    }, { timeout: (NODE_TIMEOUT_S + 3) * 1000, interval: 100, what: 'the dead node reaped (subscription_count 2)' });
    await f.sdk.get(A).trigger(name, 'barrier', {});
    await obsInbox.waitFor((e) => e.event === 'barrier', { what: 'barrier for the observer' });
    assert.equal(count(obsInbox.items, (e) => e.event === 'pusher:member_removed'), 0, JSON.stringify(obsInbox.items));
    assert.equal(count(obsInbox.items, (e) => e.event === 'pusher:member_added'), 1, JSON.stringify(obsInbox.items));
    assert.equal(obsChannel.members.count, 2);
    const users = await (await f.sdk.get(B).get({ path: `/channels/${name}/users` })).json();
    assert.deepEqual(byId(users.users), [{ id: 'mover' }, { id: 'observer' }]);

    await f.graceBarrier([A, B]);
    const later = f.receiver.events(HOOKS, (e) => e.channel === name).slice(hooksBefore);
    assert.deepEqual(later, [], 'webhooks for the channel after the mover changed nodes');
  });
});
