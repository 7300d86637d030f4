// `[server] workers = N` with `[cluster] engine = "local"`: `twistd -n soketify` is a supervisor whose
// N worker processes (its children, `python -m soketify.worker`) listen on the same port with
// SO_REUSEPORT, while the supervisor holds the host's cluster state (presence, counts, cache, users,
// max_connections, the webhook outbox) and talks to the workers over AMP. Driven by unmodified
// pusher-js 8, the Node `pusher` 5 SDK and the Python `pusher` 3.3 SDK, as the other interop tests.
//
// Which worker a client is on: a socket id is '<node>.<n>', and <node> is the node number of the
// worker process that accepted the connection (a restarted worker gets a new one). The kernel hashes
// each new connection (by its source port) to one worker; there is no way to choose, so the tests
// connect until a client lands where they need one (connectWhere) and close the others. REST calls
// go over a new TCP connection each (an http.Agent without keep-alive), so that successive calls are
// answered by different workers, as through a load balancer.
//
// Describes, each with its own daemon: two workers (spread, events, client events, presence, cache
// channels, subscription counts, users, REST queries, max_connections, /metrics), three workers
// (spread, events, presence, REST, /metrics), kill -9 of one of two workers (members removed at once,
// /ready 503 until the supervisor restarted it, pusher-js reconnects), webhooks with two workers (each
// sent once; after a kill -9, after the grace) and SIGTERM to the supervisor (4200 for every client,
// workers gone, clean exit).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';

import {
  APP,
  byId,
  count,
  expectPusherJsRefused,
  Daemon,
  REPO_ROOT,
  RedisServer,
  TWISTD,
  redisCluster,
  renderConfig,
  Inbox,
  RawClient,
  appConfig,
  childPids,
  connectPusherJs,
  freePort,
  delay,
  disconnectPusherJs,
  pollUntil,
  pusherJsErrorCode,
  pyOk,
  sdkAuthOptions,
  signInPusherJs,
  subscribePusherJs,
  uniqueName,
  userInbox,
  watchPusherJs,
  withTimeout,
} from './helpers.mjs';
import { isHook, outboxCount, webhookProblems, WebhookReceiver } from './webhook_helpers.mjs';

const GRACE_S = 1;
const HOOKS = '/workers';
const LIFECYCLE = ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed'];
// subscription_count = true: pusher-js hears pusher:subscription_count.
const COUNTED = Object.freeze({ id: '100041', key: 'counted-key', secret: 'counted-secret' });
// max_connections = 2 for the whole host.
const LIMITED = Object.freeze({ id: '100042', key: 'limited-key', secret: 'limited-secret' });
// Only the /metrics test connects with this app, so its connection count is known.
const METERED = Object.freeze({ id: '100043', key: 'metered-key', secret: 'metered-secret' });

// 40 tries to land a connection on a wanted worker: all miss with probability (1/2)^40 with two
// workers, (2/3)^40 < 1e-7 with three.
const MAX_TRIES = 40;


/** The worker a pusher-js or raw client is connected to: the node part of its socket id. */
function workerOf(c) {
  const socketId = c instanceof RawClient ? c.socketId : c.connection.socket_id;
  return String(socketId).split('.')[0];
}

function closeClient(c) {
  if (c instanceof RawClient) c.terminate();
  else disconnectPusherJs(c);
}

/** Connect with `connect()` until a client lands on a worker `accept(worker)` takes; close the others. */
async function connectWhere(connect, accept, what) {
  for (let i = 0; i < MAX_TRIES; i += 1) {
    const c = await connect();
    if (accept(workerOf(c))) return c;
    closeClient(c);
  }
  throw new Error(`no connection landed ${what} in ${MAX_TRIES} tries`);
}

/** A client on a worker none of `clients` is on. */
function elsewhere(connect, clients) {
  const taken = clients.map(workerOf);
  return connectWhere(connect, (w) => !taken.includes(w), `on a worker other than ${taken.join(', ')}`);
}

/** A client on the same worker as `other`. */
function besides(connect, other) {
  const worker = workerOf(other);
  return connectWhere(connect, (w) => w === worker, `on worker ${worker}`);
}

/** `n` clients on `n` different workers; `connect(i)` makes the i-th. */
async function onDistinctWorkers(n, connect) {
  const got = [];
  for (let i = 0; i < n; i += 1) got.push(await elsewhere(() => connect(i), got));
  return got;
}

/** GET `p` over a new TCP connection (so the kernel picks a worker anew): {status, text}. */
function freshGet(daemon, p, timeout = 2000) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: daemon.port, path: p, agent: false, timeout }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode, text }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${p} timed out`)));
    req.on('error', reject);
  });
}

/** soketify_connected{app_id} in one /metrics answer (a new connection each time). */
async function connectionsMetric(daemon, appId) {
  const { status, text } = await freshGet(daemon, '/metrics');
  assert.equal(status, 200, text);
  const m = new RegExp(`^soketify_connected\\{app_id="${appId}"\\} (\\S+)$`, 'm').exec(text);
  assert.ok(m, `no soketify_connected sample for app ${appId} in:\n${text}`);
  return Number(m[1]);
}

/** /proc/<pid> exists (a zombie counts: the supervisor reaps its workers). */
function alive(pid) {
  return fs.existsSync(`/proc/${pid}`);
}

function cmdline(pid) {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return '';
  }
}

/** The daemon, receiver and clients of one describe. */
function fixture() {
  const f = { daemon: null, receiver: null, stateDir: null, clients: [], raws: [] };

  f.start = async ({ workers, apps = [], webhooks = true, cluster = null }) => {
    f.stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'soketify-workers-state-'));
    if (webhooks) f.receiver = await WebhookReceiver.start();
    const main = appConfig(webhooks ? { webhooks: [{ url: f.receiver.url(HOOKS) }] } : {});
    f.daemon = await Daemon.start({
      server: { workers },
      detached: true,
      webhooks: { grace: GRACE_S, batch_window_ms: 20 },
      stateDir: f.stateDir,
      apps: [main, ...apps],
      cluster,
    });
    // A new TCP connection per request: successive REST calls reach different workers.
    f.sdk = f.daemon.sdk(APP, { agent: new http.Agent({ keepAlive: false }) });
    return f.daemon;
  };

  f.cleanup = async () => {
    for (const c of f.clients) disconnectPusherJs(c);
    for (const r of f.raws) r.terminate();
    if (f.daemon) await f.daemon.stop().catch(() => f.daemon.kill9());
    if (f.receiver) await f.receiver.stop();
    if (f.stateDir) fs.rmSync(f.stateDir, { recursive: true, force: true });
  };

  f.client = async (options = {}) => {
    const c = await connectPusherJs(f.daemon, options);
    f.clients.push(c);
    return c;
  };
  /** pusher-js whose auth endpoint signs presence channels as `userId` and private ones too. */
  f.member = (userId, userInfo = { name: userId }) =>
    f.client(sdkAuthOptions(f.sdk, { presenceData: () => ({ user_id: userId, user_info: userInfo }) }));
  f.raw = async (key = APP.key) => {
    const r = await RawClient.connect(f.daemon, { key, label: `raw client (${key})` });
    f.raws.push(r);
    return r;
  };
  f.subscribeFrame = (r, channel, presenceData) => {
    const data = { auth: '', channel };
    if (channel.startsWith('private-') || channel.startsWith('presence-')) {
      const signed = f.sdk.authorizeChannel(r.socketId, channel, presenceData);
      data.auth = signed.auth;
      if (signed.channel_data) data.channel_data = signed.channel_data;
    }
    return { event: 'pusher:subscribe', data };
  };
  f.rawSubscribe = async (r, channel, presenceData) => {
    const from = r.messages.length;
    r.send(f.subscribeFrame(r, channel, presenceData));
    return r.waitEvent('pusher_internal:subscription_succeeded', { channel, from });
  };
  f.getJson = async (p, params) => {
    const res = await f.sdk.get({ path: p, params });
    assert.equal(res.status, 200, `GET ${p}`);
    return res.json();
  };
  /** The webhooks queued before this call have been delivered (one outbox, sent in order). */
  f.occupiedBarrier = async () => {
    for (let round = 0; round < 2; round += 1) {
      const name = uniqueName('hook-barrier');
      const r = await f.raw();
      await r.subscribe(name);
      await f.receiver.waitEvent(HOOKS, isHook('channel_occupied', name), { what: `barrier ${name}` });
      r.terminate();
    }
  };
  /** Like occupiedBarrier, and after every vacated / member_removed waiting for the grace before it. */
  f.graceBarrier = async () => {
    const name = uniqueName('grace-barrier');
    const r = await f.raw();
    await r.subscribe(name);
    r.send({ event: 'pusher:unsubscribe', data: { channel: name } });
    await f.receiver.waitEvent(HOOKS, isHook('channel_vacated', name), { timeout: GRACE_S * 1000 + 5000, what: `grace barrier ${name}` });
    r.terminate();
    await f.occupiedBarrier();
  };
  return f;
}

// ====================================================================== two workers

describe('workers = 2 (engine local): clients on both workers of one host behave as on one server', () => {
  const f = fixture();

  before(async () => {
    await f.start({
      workers: 2,
      webhooks: false, // see 'webhooks with workers = 2' below
      apps: [
        appConfig({ ...COUNTED, subscription_count: true }),
        appConfig({ ...LIMITED, max_connections: 2 }),
        appConfig({ ...METERED }),
      ],
    });
  });

  after(() => f.cleanup());

  it('the supervisor runs two worker processes, /ready is 200, and 20 pusher-js connections land on both workers', async () => {
    const pids = childPids(f.daemon.proc.pid);
    assert.equal(pids.length, 2, `children of the supervisor: ${pids.map((p) => `${p}: ${cmdline(p)}`).join('; ')}`);
    for (const pid of pids) assert.match(cmdline(pid), /-m soketify\.worker/, `child ${pid}`);

    for (let i = 0; i < 6; i += 1) {
      const { status, text } = await freshGet(f.daemon, '/ready');
      assert.equal(status, 200, `/ready #${i}: ${text}`);
    }

    // Each connection goes to either worker with probability 1/2 (SO_REUSEPORT hashes the source
    // port): all 20 on one worker has probability 2 * 2^-20, about 2e-6.
    const clients = await Promise.all(Array.from({ length: 20 }, () => f.client()));
    const workers = clients.map(workerOf);
    assert.equal(new Set(workers).size, 2, `socket ids: ${clients.map((c) => c.connection.socket_id).join(' ')}`);
    // Socket ids are unique across the workers.
    assert.equal(new Set(clients.map((c) => c.connection.socket_id)).size, 20);
    for (const c of clients) disconnectPusherJs(c);
  });

  it('a second server with workers on the same port refuses to start (exit 1), as one process would, instead of sharing the port', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'soketify-second-'));
    try {
      const configPath = path.join(dir, 'soketify.toml');
      fs.writeFileSync(configPath, renderConfig({ port: f.daemon.port, server: { workers: 2 } }));
      const second = spawnSync(TWISTD, ['-n', '--pidfile=', 'soketify', '--config', configPath],
        { cwd: REPO_ROOT, encoding: 'utf8', timeout: 20000 });
      assert.equal(second.status, 1, second.stdout + second.stderr);
      assert.match(second.stdout, /Cannot listen on tcp:\d+.*Address already in use/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    assert.equal(childPids(f.daemon.proc.pid).length, 2, 'the first server is untouched');
    assert.equal((await freshGet(f.daemon, '/ready')).status, 200);
  });

  it('an event triggered with the Node and Python SDKs reaches the subscribers on both workers once; socket_id exclusion works across workers', async () => {
    const name = uniqueName('wk-fanout');
    const clients = await onDistinctWorkers(2, () => f.client());
    clients.push(await besides(() => f.client(), clients[0]), await besides(() => f.client(), clients[1]));
    const subs = [];
    for (const c of clients) subs.push((await subscribePusherJs(c, name)).inbox);
    const excluded = clients[3].connection.socket_id;

    await f.sdk.trigger(name, 'from-node', { via: 'node sdk' });
    await pyOk(f.daemon, [{ op: 'trigger', channels: [name], event: 'from-python', data: { via: 'python sdk' } }]);
    await f.sdk.trigger(name, 'not-for-one', { n: 1 }, { socket_id: excluded });
    for (const [i, inbox] of subs.entries()) {
      const what = `subscriber ${i} (${clients[i].connection.socket_id})`;
      assert.deepEqual((await inbox.waitFor((e) => e.event === 'from-node', { what })).data, { via: 'node sdk' });
      assert.deepEqual((await inbox.waitFor((e) => e.event === 'from-python', { what })).data, { via: 'python sdk' });
      if (i !== 3) assert.deepEqual((await inbox.waitFor((e) => e.event === 'not-for-one', { what })).data, { n: 1 });
    }
    await f.sdk.trigger(name, 'barrier', {});
    for (const [i, inbox] of subs.entries()) {
      await inbox.waitFor((e) => e.event === 'barrier', { what: `barrier for subscriber ${i}` });
      const got = inbox.items.map((e) => e.event).filter((e) => !e.startsWith('pusher')).sort();
      const expected = i === 3 ? ['barrier', 'from-node', 'from-python'] : ['barrier', 'from-node', 'from-python', 'not-for-one'];
      assert.deepEqual(got, expected, `subscriber ${i} on worker ${workerOf(clients[i])}`);
    }
  });

  it('client events on a private channel go from a pusher-js client on one worker to the one on the other worker once, never back to the sender', async () => {
    const name = uniqueName('private-wk-chat');
    const [c1, c2] = await onDistinctWorkers(2, () => f.client(sdkAuthOptions(f.sdk)));
    const s1 = await subscribePusherJs(c1, name);
    const s2 = await subscribePusherJs(c2, name);
    assert.ok(s1.channel.trigger('client-hello', { from: 1 }));
    assert.deepEqual((await s2.inbox.waitFor((e) => e.event === 'client-hello', { what: 'client-hello on worker 2' })).data, { from: 1 });
    assert.ok(s2.channel.trigger('client-back', { from: 2 }));
    assert.deepEqual((await s1.inbox.waitFor((e) => e.event === 'client-back', { what: 'client-back on worker 1' })).data, { from: 2 });
    await f.sdk.trigger(name, 'barrier', {});
    for (const [label, { inbox }] of [['1', s1], ['2', s2]]) {
      await inbox.waitFor((e) => e.event === 'barrier', { what: `barrier on worker ${label}` });
    }
    assert.deepEqual(s1.inbox.items.map((e) => e.event).filter((e) => !e.startsWith('pusher')), ['client-back', 'barrier']);
    assert.deepEqual(s2.inbox.items.map((e) => e.event).filter((e) => !e.startsWith('pusher')), ['client-hello', 'barrier']);
  });

  it('presence: members on both workers see one member list, member_added/member_removed once, user_count exact through the SDKs; a user on both workers is one member', async () => {
    const name = uniqueName('presence-wk-room');
    const alice = await f.member('alice', { name: 'Alice' });
    const bob = await elsewhere(() => f.member('bob', { name: 'Bob' }), [alice]);
    const a = await subscribePusherJs(alice, name);
    assert.equal(a.channel.members.count, 1);
    const b = await subscribePusherJs(bob, name);
    const bobSees = [];
    b.channel.members.each((m) => bobSees.push({ id: m.id, ...m.info }));
    assert.deepEqual(byId(bobSees), [{ id: 'alice', name: 'Alice' }, { id: 'bob', name: 'Bob' }]);
    assert.deepEqual(b.channel.members.me, { id: 'bob', info: { name: 'Bob' } });
    const added = await a.inbox.waitFor((e) => e.event === 'pusher:member_added', { what: 'member_added of bob for alice' });
    assert.deepEqual(added.data, { id: 'bob', info: { name: 'Bob' } });
    assert.equal(a.channel.members.count, 2);

    // A second connection of alice, on bob's worker: still two members.
    const alice2 = await besides(() => f.member('alice', { name: 'Alice' }), bob);
    const a2 = await subscribePusherJs(alice2, name);
    assert.equal(a2.channel.members.count, 2);
    for (let i = 0; i < 4; i += 1) {
      assert.deepEqual(await f.getJson(`/channels/${name}`, { info: 'user_count,subscription_count' }),
        { occupied: true, user_count: 2, subscription_count: 3 }, `REST #${i}`);
      assert.deepEqual(byId((await f.getJson(`/channels/${name}/users`)).users), [{ id: 'alice' }, { id: 'bob' }], `REST #${i}`);
    }
    const [pyInfo, pyUsers] = await pyOk(f.daemon, [
      { op: 'channel_info', channel: name, attributes: ['user_count'] },
      { op: 'users_info', channel: name },
    ]);
    assert.deepEqual(pyInfo, { occupied: true, user_count: 2 });
    assert.deepEqual(byId(pyUsers.users), [{ id: 'alice' }, { id: 'bob' }]);

    // alice leaves the first worker: she is still a member through the second.
    disconnectPusherJs(alice);
    await pollUntil(async () => (await f.getJson(`/channels/${name}`, { info: 'subscription_count' })).subscription_count === 2,
      { what: 'subscription_count 2 once alice left the first worker' });
    await f.sdk.trigger(name, 'barrier-1', {});
    await b.inbox.waitFor((e) => e.event === 'barrier-1', { what: 'barrier-1 for bob' });
    assert.equal(count(b.inbox.items, (e) => e.event === 'pusher:member_removed'), 0, JSON.stringify(b.inbox.items));
    // Her last connection leaves: one member_removed for bob.
    disconnectPusherJs(alice2);
    const removed = await b.inbox.waitFor((e) => e.event === 'pusher:member_removed', { what: 'member_removed of alice for bob' });
    assert.deepEqual(removed.data, { id: 'alice', info: { name: 'Alice' } });
    await f.sdk.trigger(name, 'barrier-2', {});
    await b.inbox.waitFor((e) => e.event === 'barrier-2', { what: 'barrier-2 for bob' });
    assert.equal(count(b.inbox.items, (e) => e.event === 'pusher:member_removed'), 1, JSON.stringify(b.inbox.items));
    assert.equal(count(b.inbox.items, (e) => e.event === 'pusher:member_added'), 0, JSON.stringify(b.inbox.items));
    assert.equal(b.channel.members.count, 1);
    assert.deepEqual(await f.getJson(`/channels/${name}`, { info: 'user_count' }), { occupied: true, user_count: 1 });
  });

  it('the largest values the limits allow cross between workers intact: 10 KB events that escape to 60 KB, a batch of ten, and a presence snapshot of 100 members with 1 KB of user_info each', async () => {
    const [a, b] = await onDistinctWorkers(2, () => f.raw());
    const channel = uniqueName('wk-big');
    for (const r of [a, b]) await r.subscribe(channel);
    // 10,240 bytes of data (the limit), each a control character JSON escapes to six bytes.
    const data = '\u0001'.repeat(10240);
    await f.sdk.trigger(channel, 'big', data);
    const batch = Array.from({ length: 10 }, (_, i) => ({ channel, name: 'big-batch', data: `${i}`.padEnd(10240, '\u0002') }));
    await f.sdk.triggerBatch(batch);
    for (const r of [a, b]) {
      const single = await r.waitEvent('big', { channel });
      assert.equal(single.data, data, `${r.label}: the 10 KB event arrived intact`);
      for (let i = 0; i < 10; i += 1) {
        const got = await r.waitEvent('big-batch', { channel, pred: (m) => m.data === batch[i].data });
        assert.equal(got.data.length, 10240);
      }
    }

    const presence = uniqueName('presence-wk-big');
    const info = (n) => ({ n, bio: `${n}`.padEnd(1000, 'é') }); // 1 KB of JSON at most (é is 2 bytes: ~1,000 chars)
    const trimmed = (n) => {
      const value = info(n);
      while (Buffer.byteLength(JSON.stringify(value)) > 1024) value.bio = value.bio.slice(0, -1);
      return value;
    };
    const members = [];
    for (let n = 0; n < 99; n += 1) {
      const r = await besides(() => f.raw(), a);
      await f.rawSubscribe(r, presence, { user_id: `big-${n}`, user_info: trimmed(n) });
      members.push(r);
    }
    const last = await besides(() => f.raw(), b);
    const joined = await f.rawSubscribe(last, presence, { user_id: 'big-99', user_info: trimmed(99) });
    const snapshot = joined.data.presence;
    assert.equal(snapshot.count, 100);
    assert.equal(Buffer.byteLength(JSON.stringify(snapshot.hash)) > 65535, true, 'the snapshot is larger than one AMP value');
    for (let n = 0; n < 100; n += 1) assert.deepEqual(snapshot.hash[`big-${n}`], trimmed(n), `member big-${n}`);
    for (const r of [...members, last]) r.terminate();
  });

  it('cache channels: the last event is replayed to subscribers on both workers; a miss gives pusher:cache_miss on both', async () => {
    const hit = uniqueName('cache-wk-hit');
    await f.sdk.trigger(hit, 'location', { lat: 52.5, lng: 13.4 });
    const [h1, h2] = await onDistinctWorkers(2, () => f.client());
    for (const c of [h1, h2]) {
      const { inbox } = await subscribePusherJs(c, hit);
      const first = await inbox.waitFor((e) => e.event === 'location' || e.event === 'pusher:cache_miss', { what: `replay on ${c.connection.socket_id}` });
      assert.equal(first.event, 'location', JSON.stringify(inbox.items));
      assert.deepEqual(first.data, { lat: 52.5, lng: 13.4 });
    }

    const miss = uniqueName('cache-wk-miss');
    const [m1, m2] = await onDistinctWorkers(2, () => f.client());
    const subs = await Promise.all([m1, m2].map((c) => subscribePusherJs(c, miss)));
    for (const [i, { inbox }] of subs.entries()) {
      await inbox.waitFor((e) => e.event === 'pusher:cache_miss', { what: `pusher:cache_miss for subscriber ${i}` });
    }
    // Then an event triggered through either worker is cached for both.
    await f.sdk.trigger(miss, 'price', { usd: 10 });
    const late = await elsewhere(() => f.client(), [m1]);
    const { inbox } = await subscribePusherJs(late, miss);
    const replay = await inbox.waitFor((e) => e.event === 'price' || e.event === 'pusher:cache_miss', { what: 'replay for a late subscriber' });
    assert.deepEqual(replay, { event: 'price', data: { usd: 10 } });
  });

  it('subscription_count (app with subscription_count = true): pusher-js on one worker hears the count change when a client on the other worker comes and goes', async () => {
    const name = uniqueName('wk-counted');
    const [c1, c2] = await onDistinctWorkers(2, () => f.client({ key: COUNTED.key }));
    const s1 = await subscribePusherJs(c1, name);
    const s2 = await subscribePusherJs(c2, name);
    const isCount = (n) => (e) => e.event === 'pusher:subscription_count' && e.data.subscription_count === n;
    await s1.inbox.waitFor(isCount(2), { what: 'subscription_count 2 on worker 1' });
    await s2.inbox.waitFor(isCount(2), { what: 'subscription_count 2 on worker 2' });
    const counted = f.daemon.sdk(COUNTED, { agent: new http.Agent({ keepAlive: false }) });
    for (let i = 0; i < 4; i += 1) {
      const res = await counted.get({ path: `/channels/${name}`, params: { info: 'subscription_count' } });
      assert.deepEqual(await res.json(), { occupied: true, subscription_count: 2 }, `REST #${i}`);
    }
    s2.channel.unsubscribe();
    const one = await s1.inbox.waitFor(isCount(1), { what: 'subscription_count back to 1 on worker 1' });
    assert.deepEqual(one.data, { subscription_count: 1 });
  });

  it('users: sendToUser (Node and Python SDKs) reaches a user signed in on both workers once per connection; terminateUserConnections closes both with 4009', async () => {
    const id = uniqueName('wk-user');
    const survivorId = uniqueName('wk-survivor');
    const signer = (userId) => sdkAuthOptions(f.sdk, { userData: () => ({ id: userId }) });
    const [c1, c2] = await onDistinctWorkers(2, () => f.client(signer(id)));
    const signed = [];
    for (const c of [c1, c2]) signed.push({ c, ...(await signInPusherJs(c, id)) });
    const survivor = await f.client(signer(survivorId));
    await signInPusherJs(survivor, survivorId);
    const inboxes = [c1, c2].map((c) => userInbox(c, 'notice'));

    assert.equal((await f.sdk.sendToUser(id, 'notice', { via: 'node' })).status, 200);
    await pyOk(f.daemon, [{ op: 'send_to_user', user_id: id, event: 'notice', data: { via: 'python' } }]);
    await f.sdk.sendToUser(id, 'notice', { via: 'node', barrier: true });
    for (const [i, inbox] of inboxes.entries()) {
      await inbox.waitFor((d) => d.barrier, { what: `barrier notice on connection ${i}` });
      assert.deepEqual(inbox.items, [{ via: 'node' }, { via: 'python' }, { via: 'node', barrier: true }], `connection ${i}`);
    }

    assert.equal((await f.sdk.terminateUserConnections(id)).status, 200);
    for (const [i, { c, watch }] of signed.entries()) {
      await watch.errors.waitFor((e) => pusherJsErrorCode(e) === 4009, { what: `error 4009 on connection ${i}` });
      await watch.states.waitFor((s) => s === 'disconnected', { what: `disconnected (connection ${i})` });
      assert.equal(c.connection.state, 'disconnected');
    }
    const still = userInbox(survivor, 'still-here');
    await f.sdk.sendToUser(survivorId, 'still-here', {});
    await still.waitFor(() => true, { what: 'event for the user that was not terminated' });
    assert.equal(survivor.connection.state, 'connected');
  });

  it('REST queries (/channels, /channels/{name}, /channels/{name}/users; Node and Python SDKs) give the same host-wide answers whichever worker answers', async () => {
    const tag = uniqueName('wkq');
    const presence = `presence-${tag}`;
    const busy = `${tag}-busy`;
    const [p1, p2] = await onDistinctWorkers(2, (i) => f.member(`p${i + 1}`));
    const p2again = await besides(() => f.member('p2'), p1);
    for (const c of [p1, p2, p2again]) await subscribePusherJs(c, presence);
    const [b1, b2] = await onDistinctWorkers(2, () => f.client());
    for (const c of [b1, b2]) await subscribePusherJs(c, busy);

    for (let i = 0; i < 6; i += 1) {
      const where = `REST request #${i}`;
      assert.deepEqual(await f.getJson('/channels', { filter_by_prefix: presence, info: 'user_count' }),
        { channels: { [presence]: { user_count: 2 } } }, where);
      assert.deepEqual(await f.getJson('/channels', { filter_by_prefix: tag }), { channels: { [busy]: {} } }, where);
      assert.deepEqual(await f.getJson(`/channels/${presence}`, { info: 'user_count,subscription_count' }),
        { occupied: true, user_count: 2, subscription_count: 3 }, where);
      assert.deepEqual(await f.getJson(`/channels/${busy}`, { info: 'subscription_count' }), { occupied: true, subscription_count: 2 }, where);
      assert.deepEqual(byId((await f.getJson(`/channels/${presence}/users`)).users), [{ id: 'p1' }, { id: 'p2' }], where);
      assert.deepEqual(await f.getJson(`/channels/${tag}-empty`), { occupied: false }, where);
    }
    for (let i = 0; i < 2; i += 1) {
      const [pyList, pyPresence, pyBusy, pyUsers] = await pyOk(f.daemon, [
        { op: 'channels_info', prefix_filter: presence, attributes: ['user_count'] },
        { op: 'channel_info', channel: presence, attributes: ['user_count', 'subscription_count'] },
        { op: 'channel_info', channel: busy, attributes: ['subscription_count'] },
        { op: 'users_info', channel: presence },
      ]);
      assert.deepEqual(pyList, { channels: { [presence]: { user_count: 2 } } });
      assert.deepEqual(pyPresence, { occupied: true, user_count: 2, subscription_count: 3 });
      assert.deepEqual(pyBusy, { occupied: true, subscription_count: 2 });
      assert.deepEqual(byId(pyUsers.users), [{ id: 'p1' }, { id: 'p2' }]);
    }
    // A trigger with info counts the subscribers of both workers.
    const res = await f.sdk.trigger([presence, busy], 'counted', {}, { info: 'subscription_count,user_count' });
    assert.deepEqual(await res.json(), {
      channels: { [presence]: { subscription_count: 3, user_count: 2 }, [busy]: { subscription_count: 2 } },
    });
  });

  it('max_connections = 2 counts the connections of both workers: with one client on each, every further connection (raw and pusher-js) is refused with 4004', async () => {
    const limited = () => f.raw(LIMITED.key);
    const first = await limited();
    let second = null;
    for (let i = 0; i < MAX_TRIES && !second; i += 1) {
      const r = await limited();
      if (workerOf(r) !== workerOf(first)) {
        second = r;
        break;
      }
      // Same worker: close it and wait until the host counts one connection again.
      r.terminate();
      await pollUntil(async () => (await connectionsMetric(f.daemon, LIMITED.id)) === 1, { what: 'one limited connection again' });
      await delay(200);
    }
    assert.ok(second, 'no second limited connection landed on the other worker');
    // Each worker hears the other's count over its AMP link (a message, not a round trip).
    await delay(300);

    // Each worker holds one connection of the app: any refusal counts the other worker's.
    for (let i = 0; i < 6; i += 1) {
      const extra = RawClient.open(f.daemon.wsUrl(LIMITED.key), `limited raw client ${i}`);
      f.raws.push(extra);
      const error = await extra.waitEvent('pusher:error', { timeout: 5000 }).catch((err) => err);
      const closed = await extra.waitClose();
      assert.equal(error?.data?.code, 4004, `attempt ${i}: ${JSON.stringify(extra.messages.map((m) => m.raw))}`);
      assert.equal(closed.code, 4004, `attempt ${i}`);
    }
    await expectPusherJsRefused(f.daemon, LIMITED.key, 4004, f.clients);
    for (const r of [first, second]) {
      await r.sync();
      assert.equal(r.close, null, `${r.label} is still connected`);
    }

    // One leaves: a new connection is admitted, whichever worker takes it.
    first.terminate();
    await pollUntil(async () => (await connectionsMetric(f.daemon, LIMITED.id)) === 1, { what: 'one limited connection after the first left' });
    await delay(300);
    const again = await limited();
    assert.equal(again.close, null);
  });

  it('/metrics answered by any worker counts the connections of both workers (soketify_connected summed)', async () => {
    const metered = () => f.raw(METERED.key);
    const clients = await onDistinctWorkers(2, metered);
    while (clients.length < 10) clients.push(await metered());
    const workers = new Set(clients.map(workerOf));
    assert.equal(workers.size, 2);
    const perWorker = [...workers].map((w) => count(clients, (c) => workerOf(c) === w));
    for (let i = 0; i < 10; i += 1) {
      assert.equal(await connectionsMetric(f.daemon, METERED.id), 10, `/metrics #${i} (connections per worker: ${perWorker})`);
    }
    for (const r of clients.slice(0, 4)) r.terminate();
    await pollUntil(async () => (await connectionsMetric(f.daemon, METERED.id)) === 6, { what: 'soketify_connected 6' });
    for (let i = 0; i < 6; i += 1) {
      assert.equal(await connectionsMetric(f.daemon, METERED.id), 6, `/metrics #${i} after 4 closed`);
    }
  });
});

// ====================================================================== three workers

describe('workers = 3: connections spread over three workers, which serve as one', () => {
  const f = fixture();

  before(async () => {
    await f.start({ workers: 3, webhooks: false, apps: [appConfig({ ...METERED })] });
  });

  after(() => f.cleanup());

  it('three worker processes; 36 pusher-js connections land on all three workers; /ready is 200', async () => {
    const pids = childPids(f.daemon.proc.pid);
    assert.equal(pids.length, 3, `children: ${pids.map((p) => `${p}: ${cmdline(p)}`).join('; ')}`);
    for (let i = 0; i < 4; i += 1) assert.equal((await freshGet(f.daemon, '/ready')).status, 200);
    // Some worker gets none of 36 connections with probability at most 3 * (2/3)^36, about 1.4e-6.
    const clients = await Promise.all(Array.from({ length: 36 }, () => f.client()));
    assert.equal(new Set(clients.map(workerOf)).size, 3, `socket ids: ${clients.map((c) => c.connection.socket_id).join(' ')}`);
    for (const c of clients) disconnectPusherJs(c);
  });

  it('events (Node and Python SDKs) reach a subscriber on each of the three workers once', async () => {
    const name = uniqueName('wk3-fanout');
    const clients = await onDistinctWorkers(3, () => f.client());
    const subs = [];
    for (const c of clients) subs.push((await subscribePusherJs(c, name)).inbox);
    await f.sdk.trigger(name, 'from-node', { n: 1 });
    await pyOk(f.daemon, [{ op: 'trigger', channels: [name], event: 'from-python', data: { n: 2 } }]);
    for (const inbox of subs) {
      await inbox.waitFor((e) => e.event === 'from-node', { what: 'from-node' });
      await inbox.waitFor((e) => e.event === 'from-python', { what: 'from-python' });
    }
    await f.sdk.trigger(name, 'barrier', {});
    for (const [i, inbox] of subs.entries()) {
      await inbox.waitFor((e) => e.event === 'barrier', { what: `barrier on worker ${i}` });
      assert.deepEqual(inbox.items.map((e) => e.event).filter((e) => !e.startsWith('pusher')).sort(),
        ['barrier', 'from-node', 'from-python'], `worker ${workerOf(clients[i])}`);
    }
  });

  it('presence members on three workers: each sees all three, member_removed once, user_count 3 then 2 through REST', async () => {
    const name = uniqueName('presence-wk3');
    const members = await onDistinctWorkers(3, (i) => f.member(`m${i}`));
    const subs = [];
    for (const c of members) subs.push(await subscribePusherJs(c, name));
    for (const [i, { channel, inbox }] of subs.entries()) {
      await pollUntil(() => channel.members.count === 3, { what: `member m${i} to see three members` });
      const ids = [];
      channel.members.each((m) => ids.push(m.id));
      assert.deepEqual(ids.sort(), ['m0', 'm1', 'm2']);
      assert.equal(count(inbox.items, (e) => e.event === 'pusher:member_added'), 2 - i, JSON.stringify(inbox.items));
    }
    for (let i = 0; i < 6; i += 1) {
      assert.deepEqual(await f.getJson(`/channels/${name}`, { info: 'user_count' }), { occupied: true, user_count: 3 });
    }
    disconnectPusherJs(members[2]);
    for (const i of [0, 1]) {
      const removed = await subs[i].inbox.waitFor((e) => e.event === 'pusher:member_removed', { what: `member_removed for m${i}` });
      assert.equal(removed.data.id, 'm2');
    }
    await f.sdk.trigger(name, 'barrier', {});
    for (const i of [0, 1]) {
      await subs[i].inbox.waitFor((e) => e.event === 'barrier', { what: `barrier for m${i}` });
      assert.equal(count(subs[i].inbox.items, (e) => e.event === 'pusher:member_removed'), 1);
    }
    for (let i = 0; i < 6; i += 1) {
      assert.deepEqual(await f.getJson(`/channels/${name}`, { info: 'user_count' }), { occupied: true, user_count: 2 });
    }
  });

  it('/metrics from any of the three workers counts every connection', async () => {
    const metered = () => f.raw(METERED.key);
    const clients = await onDistinctWorkers(3, metered);
    while (clients.length < 9) clients.push(await metered());
    for (let i = 0; i < 9; i += 1) assert.equal(await connectionsMetric(f.daemon, METERED.id), 9, `/metrics #${i}`);
  });
});

// ====================================================================== kill -9 of a worker

describe('kill -9 of one of two workers', () => {
  const f = fixture();
  const presence = uniqueName('presence-wk-kill');
  const publicOf = ['a', 'b'].map((w) => uniqueName(`wk-kill-public-${w}`)); // held by one worker each
  const plainChannel = uniqueName('wk-kill-plain');
  let js; // [js-a, js-b]: pusher-js members, one on each worker
  let raws; // [raw-a, raw-b]: raw members on the same workers (raw clients do not reconnect)
  const jsInbox = [];
  let plain; // pusher-js clients on whichever worker, subscribed to plainChannel
  let plainBefore; // their socket ids before the kill
  let plainWatch;
  let pidsBefore;
  let victimPid;
  let killedAt;
  let K; // index (0: 'a', 1: 'b') of the killed worker
  let S; // index of the survivor
  let killedWorker; // its node number (socket id prefix)
  let readyLog; // Promise of [{at, status}] of /ready after the kill
  let whileDown; // [{at, socketId | error}]: raw clients connected right after the kill

  before(async () => {
    await f.start({ workers: 2, webhooks: false }); // webhooks after a kill: see 'webhooks with workers = 2'
    js = await onDistinctWorkers(2, (i) => f.member(`js-${'ab'[i]}`));
    raws = [];
    for (const [i, c] of js.entries()) {
      const r = await besides(() => f.raw(), c);
      raws.push(r);
      await f.rawSubscribe(r, presence, { user_id: `raw-${'ab'[i]}` });
      await r.subscribe(publicOf[i]);
    }
    for (const c of js) {
      const { channel } = await subscribePusherJs(c, presence);
      const inbox = new Inbox(`presence events of ${c.connection.socket_id}`);
      channel.bind_global((event, data) => inbox.push({ event, data, at: Date.now() }));
      jsInbox.push({ channel, inbox });
    }
    plain = await Promise.all(Array.from({ length: 8 }, () => f.client()));
    for (const c of plain) await subscribePusherJs(c, plainChannel);
    plainBefore = plain.map((c) => c.connection.socket_id);
    plainWatch = plain.map((c) => watchPusherJs(c));

    pidsBefore = childPids(f.daemon.proc.pid);
    assert.equal(pidsBefore.length, 2, `children: ${pidsBefore}`);
    victimPid = pidsBefore[0];
    killedAt = Date.now();
    process.kill(victimPid, 'SIGKILL');
    // /ready over new connections every 50 ms, until it answered 503 and then 200 again (or 10 s).
    readyLog = (async () => {
      const log = [];
      while (Date.now() - killedAt < 10000) {
        const status = await freshGet(f.daemon, '/ready', 1000).then((r) => r.status, (err) => err.code ?? err.message);
        log.push({ at: Date.now() - killedAt, status });
        if (status === 200 && log.some((e) => e.status === 503)) break;
        await delay(50);
      }
      return log;
    })();
    // The raw member of the killed worker is cut off at once; that tells which worker it was.
    K = await withTimeout(Promise.race(raws.map((r, i) => r.closed.then(() => i))), 2000, 'a raw client of the killed worker to be closed');
    S = 1 - K;
    killedWorker = workerOf(js[K]);
    // New clients while the killed worker is down (the supervisor waits 1 s before restarting a
    // worker that ran less than 10 s): the surviving worker admits them. (A connection the kernel
    // hashed to the dying worker's port in the instant before its process was gone is reset like
    // any connection to a dead process; pusher-js retries it. So they start once it is gone.)
    await pollUntil(() => !alive(victimPid), { interval: 5, what: 'the killed worker to be gone' });
    whileDown = [];
    for (let i = 0; i < 5; i += 1) {
      const at = Date.now() - killedAt;
      const outcome = await f.raw().then((r) => ({ at, socketId: r.socketId }), (err) => ({ at, error: err.message }));
      whileDown.push(outcome);
    }
  });

  after(() => f.cleanup());

  it('the member on the surviving worker gets member_removed for both members of the killed worker within 2 s; REST stops listing them', async (t) => {
    const { inbox } = jsInbox[S];
    for (const user of [`raw-${'ab'[K]}`, `js-${'ab'[K]}`]) {
      const removed = await inbox.waitFor((e) => e.event === 'pusher:member_removed' && e.data.id === user,
        { timeout: Math.max(100, 2000 - (Date.now() - killedAt)), what: `member_removed of ${user}` });
      t.diagnostic(`member_removed of ${user} ${removed.at - killedAt} ms after the kill`);
      assert.ok(removed.at - killedAt <= 2000, `member_removed of ${user} came ${removed.at - killedAt} ms after the kill`);
    }
    // The raw member on the surviving worker heard it too; the survivors were not removed.
    await raws[S].waitEvent('pusher_internal:member_removed', { channel: presence, pred: (m) => m.data.user_id === `raw-${'ab'[K]}` });
    assert.equal(count(inbox.items, (e) => e.event === 'pusher:member_removed' && e.data.id.endsWith(`-${'ab'[S]}`)), 0, JSON.stringify(inbox.items));
    const users = byId((await f.getJson(`/channels/${presence}/users`)).users).map((u) => u.id);
    assert.ok(!users.includes(`raw-${'ab'[K]}`), `users: ${users}`);
    assert.ok(users.includes(`raw-${'ab'[S]}`) && users.includes(`js-${'ab'[S]}`), `users: ${users}`);
    assert.deepEqual(await f.getJson(`/channels/${publicOf[K]}`), { occupied: false });
    assert.deepEqual(await f.getJson(`/channels/${publicOf[S]}`), { occupied: true });
  });

  it('while the killed worker is down, the surviving worker goes on admitting new clients', () => {
    for (const outcome of whileDown) {
      assert.ok(outcome.socketId, `a client ${outcome.at} ms after the kill was refused: ${outcome.error}`);
      assert.notEqual(outcome.socketId.split('.')[0], killedWorker);
    }
    assert.ok(whileDown[0].at < 1000, `the first client came only ${whileDown[0].at} ms after the kill`);
  });

  it('/ready answers 503 while the killed worker is down, and 200 again once the supervisor restarted it (a new child process)', async (t) => {
    const log = await readyLog;
    t.diagnostic(`/ready after the kill: ${log.map((e) => `${e.at}ms:${e.status}`).join(' ')}`);
    const firstDown = log.findIndex((e) => e.status === 503);
    assert.ok(firstDown >= 0, `/ready never answered 503 after the kill: ${JSON.stringify(log)}`);
    assert.ok(log[firstDown].at < 1000, `first 503 ${log[firstDown].at} ms after the kill`);
    const up = log.slice(firstDown).find((e) => e.status === 200);
    assert.ok(up, `/ready not 200 again within 10 s: ${JSON.stringify(log)}`);
    assert.ok(up.at < 5000, `/ready 200 again only ${up.at} ms after the kill`);
    for (let i = 0; i < 4; i += 1) assert.equal((await freshGet(f.daemon, '/ready')).status, 200);

    const pids = childPids(f.daemon.proc.pid);
    assert.equal(pids.length, 2, `children after the restart: ${pids}`);
    assert.ok(!pids.includes(victimPid), `the killed pid ${victimPid} is still a child: ${pids}`);
    assert.ok(pids.includes(pidsBefore[1]), `the other worker ${pidsBefore[1]} was not left alone: ${pids}`);
    assert.match(f.daemon.output(), /Worker \d+ ended \(signal 9\)/);
  });

  it('the killed worker\'s pusher-js clients reconnect by themselves to a live worker and resubscribe; the others are untouched', async () => {
    // js-K comes back as a member: the survivor hears member_added after the member_removed.
    const { inbox } = jsInbox[S];
    const user = `js-${'ab'[K]}`;
    await inbox.waitFor((e) => e.event === 'pusher:member_added' && e.data.id === user, { timeout: 8000, what: `${user} back` });
    await pollUntil(() => js[K].connection.state === 'connected' && workerOf(js[K]) !== killedWorker,
      { timeout: 8000, what: `${user} connected to a live worker` });

    for (const [i, c] of plain.entries()) {
      if (plainBefore[i].split('.')[0] === killedWorker) {
        await pollUntil(() => c.connection.state === 'connected' && c.connection.socket_id !== plainBefore[i],
          { timeout: 8000, what: `plain client ${plainBefore[i]} to reconnect` });
        assert.notEqual(workerOf(c), killedWorker);
      } else {
        assert.equal(c.connection.socket_id, plainBefore[i], 'a client of the surviving worker kept its connection');
        assert.deepEqual(plainWatch[i].states.items, [], `states of ${plainBefore[i]}`);
      }
    }
    // Resubscribed: an event reaches all eight once.
    const inboxes = plain.map((c) => {
      const got = new Inbox(`plain ${c.connection.socket_id}`);
      c.channel(plainChannel).bind('after-kill', (d) => got.push(d));
      return got;
    });
    await pollUntil(async () => (await f.getJson(`/channels/${plainChannel}`, { info: 'subscription_count' })).subscription_count === 8,
      { timeout: 5000, what: 'all eight plain clients subscribed again' });
    await f.sdk.trigger(plainChannel, 'after-kill', { n: 1 });
    await f.sdk.trigger(plainChannel, 'after-kill', { n: 2 });
    for (const got of inboxes) {
      await got.waitFor((d) => d.n === 2, { what: 'second after-kill event' });
      assert.deepEqual(got.items, [{ n: 1 }, { n: 2 }], got.label);
    }
  });

  it('after the restart new connections land on both live workers again (never on the killed one)', async () => {
    await f.daemon.waitReady(8000);
    // All 20 on one worker: probability 2 * 2^-20.
    const clients = await Promise.all(Array.from({ length: 20 }, () => f.client()));
    const workers = new Set(clients.map(workerOf));
    assert.equal(workers.size, 2, `socket ids: ${clients.map((c) => c.connection.socket_id).join(' ')}`);
    assert.ok(!workers.has(killedWorker), `a connection landed on the killed worker's node ${killedWorker}`);
    for (const c of clients) disconnectPusherJs(c);
  });
});

// ====================================================================== the outbox and kill -9

describe('the supervisor\'s webhook outbox survives kill -9 of the whole host', () => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'soketify-workers-crash-'));
  const daemons = [];
  let receiver;
  let raw;

  after(async () => {
    raw?.terminate();
    for (const d of daemons) await d.stop().catch(() => d.kill9());
    await receiver?.stop();
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  it('events stored while the receiver is down are sent after SIGKILL of the supervisor and its workers and a restart', async () => {
    const receiverPort = await freePort(); // nothing listens there until after the crash
    const url = `http://127.0.0.1:${receiverPort}${HOOKS}`;
    const start = () => Daemon.start({
      server: { workers: 2 }, detached: true, stateDir, webhooks: { grace: GRACE_S, batch_window_ms: 20 },
      apps: [appConfig({ webhooks: [{ url, event_types: ['channel_occupied', 'channel_vacated'] }] })],
    });
    const first = await start();
    daemons.push(first);
    raw = await RawClient.connect(first);
    const names = [1, 2, 3].map((i) => uniqueName(`wk-crash-${i}`));
    for (const name of names) await raw.subscribe(name);
    raw.send({ event: 'pusher:unsubscribe', data: { channel: names[0] } });
    const expected = [...names.map((channel) => `channel_occupied ${channel}`), `channel_vacated ${names[0]}`];
    await pollUntil(() => outboxCount(stateDir) >= expected.length,
      { timeout: 5000 + GRACE_S * 1000, interval: 100, what: `${expected.length} events in the outbox` });

    const pids = childPids(first.proc.pid);
    await first.kill9();
    await pollUntil(() => pids.every((pid) => !fs.existsSync(`/proc/${pid}`)), { what: 'the workers gone too' });
    assert.equal(outboxCount(stateDir), expected.length, 'every event is still in the outbox');

    receiver = await WebhookReceiver.start({ port: receiverPort });
    daemons.push(await start());
    const key = (e) => `${e.name} ${e.channel}`;
    await pollUntil(() => expected.every((k) => receiver.events(HOOKS).map(key).includes(k)),
      { timeout: 10000, what: 'every stored event sent after the restart' });
    for (const w of receiver.webhooks) assert.deepEqual(webhookProblems(w), []);
    await pollUntil(() => outboxCount(stateDir) === 0, { what: 'an empty outbox' });
  });
});

// ====================================================================== engine = "redis"

describe('workers = 2 with engine = "redis": each worker is a node of the Redis cluster', () => {
  const f = fixture();
  let redis;

  before(async () => {
    redis = await RedisServer.start();
    // An app with max_connections: each worker counts it through Redis, not through its link.
    await f.start({
      workers: 2, webhooks: false, apps: [appConfig({ ...LIMITED, max_connections: 50 })],
      cluster: redisCluster(redis, { prefix: 'workers-redis' }),
    });
  });

  after(async () => {
    await f.cleanup();
    await redis?.close();
  });

  it('members on both workers see each other, an event reaches both once, and the app with max_connections admits clients on both workers', async () => {
    const channel = uniqueName('presence-wk-redis');
    const members = await onDistinctWorkers(2, (i) => f.member(`redis-${i}`));
    const inboxes = [];
    for (const c of members) {
      const { channel: joined } = await subscribePusherJs(c, channel);
      const inbox = new Inbox(`events of ${c.connection.socket_id}`);
      joined.bind('hello', (d) => inbox.push(d));
      inboxes.push({ joined, inbox });
    }
    await pollUntil(() => inboxes.every(({ joined }) => joined.members.count === 2), { what: 'both members on both workers' });
    await f.sdk.trigger(channel, 'hello', { n: 1 });
    for (const { inbox } of inboxes) {
      await inbox.waitFor((d) => d.n === 1, { what: 'the event' });
      await delay(100);
      assert.deepEqual(inbox.items, [{ n: 1 }], inbox.label);
    }
    const limited = await onDistinctWorkers(2, () => f.raw(LIMITED.key));
    assert.notEqual(workerOf(limited[0]), workerOf(limited[1]));
    assert.match(f.daemon.output(), /Starting 2 workers \(engine redis\)/);
    assert.doesNotMatch(f.daemon.output(), /Traceback|Worker \d+ ended/);
  });
});

// ====================================================================== webhooks

describe('webhooks with workers = 2: the supervisor sends each webhook once, whatever workers its clients are on', () => {
  const f = fixture();

  before(async () => {
    await f.start({ workers: 2 });
  });

  after(() => f.cleanup());

  it('webhooks: channel_occupied, member_added, member_removed and channel_vacated come once each when clients on both workers join and leave at the same time', async () => {
    const publicName = uniqueName('wk-hooks');
    const presenceName = uniqueName('presence-wk-hooks');
    const [r1, r2] = await onDistinctWorkers(2, () => f.raw());
    const solo = await besides(() => f.raw(), r1);
    // First subscriptions on both workers in the same tick; 'twin' joins the presence channel
    // through both workers at once.
    const from = [r1.messages.length, r2.messages.length];
    for (const r of [r1, r2]) {
      r.send(f.subscribeFrame(r, publicName));
      r.send(f.subscribeFrame(r, presenceName, { user_id: 'twin' }));
    }
    for (const [i, r] of [r1, r2].entries()) {
      for (const channel of [publicName, presenceName]) {
        await r.waitEvent('pusher_internal:subscription_succeeded', { channel, from: from[i] });
      }
    }
    await f.rawSubscribe(solo, presenceName, { user_id: 'solo' });
    for (const [name, channel, user] of [
      ['channel_occupied', publicName], ['channel_occupied', presenceName],
      ['member_added', presenceName, 'twin'], ['member_added', presenceName, 'solo'],
    ]) {
      await f.receiver.waitEvent(HOOKS, isHook(name, channel, user), { what: `${name} ${channel} ${user ?? ''}` });
    }
    // Everyone leaves at once.
    for (const r of [r1, r2]) {
      r.send({ event: 'pusher:unsubscribe', data: { channel: publicName } });
      r.send({ event: 'pusher:unsubscribe', data: { channel: presenceName } });
    }
    solo.terminate();
    for (const channel of [publicName, presenceName]) {
      await f.receiver.waitEvent(HOOKS, isHook('channel_vacated', channel), { timeout: GRACE_S * 1000 + 5000, what: `channel_vacated ${channel}` });
    }
    await f.graceBarrier();

    const lifecycle = (channel) => f.receiver.events(HOOKS, (e) => e.channel === channel && LIFECYCLE.includes(e.name));
    assert.deepEqual(lifecycle(publicName).map((e) => e.name), ['channel_occupied', 'channel_vacated'], JSON.stringify(lifecycle(publicName)));
    const presence = lifecycle(presenceName);
    for (const user of ['twin', 'solo']) {
      assert.equal(count(presence, isHook('member_added', presenceName, user)), 1, `member_added ${user}: ${JSON.stringify(presence)}`);
      assert.equal(count(presence, isHook('member_removed', presenceName, user)), 1, `member_removed ${user}: ${JSON.stringify(presence)}`);
    }
    assert.equal(count(presence, (e) => e.name === 'channel_occupied'), 1, JSON.stringify(presence));
    assert.equal(count(presence, (e) => e.name === 'channel_vacated'), 1, JSON.stringify(presence));
    assert.equal(presence.length, 6, JSON.stringify(presence));
    for (const w of f.receiver.webhooks.filter((w) => w.events.some((e) => [publicName, presenceName].includes(e.channel)))) {
      assert.deepEqual(webhookProblems(w), [], w.body);
    }
  });


  it('a cache miss with subscribers on both workers gives one cache_miss webhook', async () => {
    const miss = uniqueName('cache-wk-miss');
    const clients = await onDistinctWorkers(2, () => f.client());
    const subs = await Promise.all(clients.map((c) => subscribePusherJs(c, miss)));
    for (const [i, { inbox }] of subs.entries()) {
      await inbox.waitFor((e) => e.event === 'pusher:cache_miss', { what: `pusher:cache_miss for subscriber ${i}` });
    }
    const { webhook } = await f.receiver.waitEvent(HOOKS, isHook('cache_miss', miss), { what: 'cache_miss webhook' });
    assert.deepEqual(webhookProblems(webhook), [], webhook.body);
    await f.occupiedBarrier();
    const misses = f.receiver.events(HOOKS, isHook('cache_miss', miss));
    assert.equal(misses.length, 1, JSON.stringify(misses));
  });

  it('kill -9 of a worker: after the grace, one member_removed for its member and one channel_vacated for the channel only it held; nothing for the other worker\'s', async (t) => {
    const presence = uniqueName('presence-wk-hook-kill');
    const publicOf = ['a', 'b'].map((w) => uniqueName(`wk-hook-kill-${w}`));
    const raws = await onDistinctWorkers(2, () => f.raw());
    for (const [i, r] of raws.entries()) {
      await f.rawSubscribe(r, presence, { user_id: `raw-${'ab'[i]}` });
      await r.subscribe(publicOf[i]);
    }
    for (const [name, channel, user] of [
      ['member_added', presence, 'raw-a'], ['member_added', presence, 'raw-b'],
      ['channel_occupied', publicOf[0]], ['channel_occupied', publicOf[1]],
    ]) {
      await f.receiver.waitEvent(HOOKS, isHook(name, channel, user), { what: `${name} ${channel} ${user ?? ''}` });
    }
    await f.occupiedBarrier();

    const pids = childPids(f.daemon.proc.pid);
    assert.equal(pids.length, 2, `children: ${pids}`);
    const killedAt = Date.now();
    process.kill(pids[0], 'SIGKILL');
    const K = await withTimeout(Promise.race(raws.map((r, i) => r.closed.then(() => i))), 2000, 'a raw client of the killed worker to be closed');
    const S = 1 - K;
    const from = f.receiver.webhooks.length;
    const hookArrival = async (name, channel, user) => {
      await f.receiver.waitEvent(HOOKS, isHook(name, channel, user), { from, timeout: GRACE_S * 1000 + 5000, what: `${name} webhook after the kill` });
      return Date.now() - killedAt;
    };
    const [removedAfter, vacatedAfter] = await Promise.all([
      hookArrival('member_removed', presence, `raw-${'ab'[K]}`),
      hookArrival('channel_vacated', publicOf[K]),
    ]);
    t.diagnostic(`member_removed webhook ${removedAfter} ms, channel_vacated webhook ${vacatedAfter} ms after the kill`);
    // Sent once the grace has passed (with a little slack for the clocks of two processes).
    assert.ok(removedAfter >= GRACE_S * 1000 - 100, `member_removed webhook ${removedAfter} ms after the kill`);
    assert.ok(vacatedAfter >= GRACE_S * 1000 - 100, `channel_vacated webhook ${vacatedAfter} ms after the kill`);

    await f.daemon.waitReady(8000);
    await f.graceBarrier();
    const events = f.receiver.events(HOOKS, (e) => [presence, ...publicOf].includes(e.channel) && LIFECYCLE.includes(e.name));
    const what = JSON.stringify(events);
    assert.equal(count(events, isHook('member_removed', presence, `raw-${'ab'[K]}`)), 1, what);
    assert.equal(count(events, isHook('member_removed', presence, `raw-${'ab'[S]}`)), 0, what);
    assert.equal(count(events, isHook('channel_vacated', publicOf[K])), 1, what);
    assert.equal(count(events, isHook('channel_vacated', publicOf[S])), 0, what);
    assert.equal(count(events, isHook('channel_vacated', presence)), 0, what);
    for (const channel of [presence, ...publicOf]) assert.equal(count(events, isHook('channel_occupied', channel)), 1, what);
    for (const w of f.receiver.webhooks.slice(from)) assert.deepEqual(webhookProblems(w), [], w.body);
  });
});

// ====================================================================== SIGTERM

describe('SIGTERM to the supervisor', () => {
  const f = fixture();

  before(async () => {
    await f.start({ workers: 2, webhooks: false });
  });

  after(() => f.cleanup());

  it('stops both workers gracefully: every client on either worker gets pusher:error 4200 and close 4200, the worker processes end, the daemon exits cleanly', async () => {
    const name = uniqueName('wk-stopping');
    const raws = await onDistinctWorkers(2, () => f.raw());
    for (const r of raws) await r.subscribe(name);
    const clients = await onDistinctWorkers(2, () => f.client());
    const watches = clients.map((c) => watchPusherJs(c));
    for (const c of clients) await subscribePusherJs(c, name);
    const pids = childPids(f.daemon.proc.pid);
    assert.equal(pids.length, 2);

    f.daemon.proc.kill('SIGTERM');
    for (const [i, r] of raws.entries()) {
      const close = await r.waitClose(10000);
      const errors = r.messages.filter((m) => m.event === 'pusher:error');
      assert.deepEqual(errors.map((m) => m.data.code), [4200], `raw client ${i} (${r.socketId}): ${JSON.stringify(errors.map((m) => m.raw))}`);
      assert.equal(close.code, 4200, `raw client ${i}: close ${close.code} ${close.reason}`);
    }
    for (const [i, watch] of watches.entries()) {
      await watch.errors.waitFor((e) => pusherJsErrorCode(e) === 4200, { timeout: 10000, what: `pusher-js ${i}: error 4200` });
      await watch.states.waitFor((s) => s === 'connecting', { timeout: 10000, what: `pusher-js ${i}: connecting again` });
      assert.ok(!watch.states.items.includes('disconnected'), `pusher-js ${i} states: ${watch.states.items}`);
    }
    const exit = await withTimeout(f.daemon.exited, 15000, 'the supervisor to exit');
    for (const c of clients) disconnectPusherJs(c); // they would keep trying a port nobody listens on
    // twistd re-raises the terminating signal after a clean shutdown (see graceful_stop.test.mjs).
    assert.ok(exit.code === 0 || (exit.code === null && exit.signal === 'SIGTERM'), `exit ${JSON.stringify(exit)}`);
    for (const pid of pids) assert.ok(!alive(pid), `worker ${pid} still exists: ${cmdline(pid)}`);
    const output = f.daemon.output();
    assert.equal((output.match(/Worker \d+ stopped \(status 0\)/g) ?? []).length, 2, output);
  });

  // A stopping worker closes its link only once its last clients' leaves are answered.
  it('the graceful stop of the workers logs no traceback', () => {
    assert.ok(f.daemon.exit, 'the previous test stopped the daemon');
    const output = f.daemon.output();
    assert.ok(!/Traceback|Unhandled error/i.test(output), `the daemon logged an error while stopping:\n${output}`);
  });
});
