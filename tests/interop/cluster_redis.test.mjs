// The cluster's Redis going away and coming back (DESIGN.md "Cluster": a node that loses Redis and
// gets it back, or finds it emptied, asks its clients to reconnect with 4200 and joins again as a
// new node; REST answers 503 while it cannot reach Redis; /ready says whether it is registered).
// Each describe has its own redis-server and nodes.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import {
  APP,
  byId,
  Daemon,
  Inbox,
  RawClient,
  RedisServer,
  appConfig,
  connectPusherJs,
  delay,
  disconnectPusherJs,
  freePort,
  pollUntil,
  pusherJsErrorCode,
  redisCluster,
  sdkAuthOptions,
  startNodes,
  stopNodes,
  subscribePusherJs,
  uniqueName,
  watchPusherJs,
} from './helpers.mjs';


describe('Redis restarted (empty) under live traffic', () => {
  const NODE_TIMEOUT_S = 2;
  const TICK_MS = 50;
  const OUTAGE_MS = 1000;
  const RECOVERY_MS = 10000;
  let redis;
  let nodes = [];
  const clients = [];
  const raws = []; // one raw client per node, to read the exact error frame and close code
  const subscribers = []; // per node: {node, c, watch, ticks (Inbox), presence (channel), socketBefore}
  const requests = []; // every trigger of the loop: {seq, via, startedAt, ms, status, error}
  const readyDuringOutage = [];
  const publicName = uniqueName('redis-traffic');
  const presenceName = uniqueName('presence-redis-traffic');
  let loop = null;
  let seq = 0;
  let stoppedAt;
  let backAt;
  let resubscribedAt; // every client had reconnected and subscribed again

  /** Trigger a tick through every node every TICK_MS until stopped; records every answer. */
  function startTraffic() {
    let running = true;
    const sdks = nodes.map((node) => node.sdk(APP, { timeout: 3000 }));
    const inflight = new Set();
    const tick = () => {
      if (!running) return;
      nodes.forEach((node, i) => {
        seq += 1;
        const record = { seq, via: node.label, startedAt: Date.now(), ms: null, status: null, error: null };
        requests.push(record);
        const p = sdks[i].trigger(publicName, 'tick', { seq: record.seq, via: node.label })
          .then((res) => { record.status = res.status; })
          .catch((err) => {
            record.status = err.status ?? null;
            record.error = err.status ? null : String(err.message || err);
          })
          .finally(() => {
            record.ms = Date.now() - record.startedAt;
            inflight.delete(p);
          });
        inflight.add(p);
      });
      timer = setTimeout(tick, TICK_MS);
    };
    let timer = setTimeout(tick, 0);
    return {
      async stop() {
        running = false;
        clearTimeout(timer);
        await Promise.all([...inflight]);
      },
    };
  }

  before(async () => {
    redis = await RedisServer.start();
    nodes = await startNodes(3, {
      apps: [appConfig()],
      cluster: redisCluster(redis, { prefix: `soketify-redis-${process.pid}`, nodeTimeout: NODE_TIMEOUT_S }),
    });
    nodes.forEach((n, i) => { n.label = 'ABC'[i]; });
    for (const node of nodes) {
      const user = `u-${node.label}`;
      const c = await connectPusherJs(node, sdkAuthOptions(node.sdk(), { presenceData: () => ({ user_id: user, user_info: { node: node.label } }) }));
      clients.push(c);
      const watch = watchPusherJs(c);
      const ticks = new Inbox(`ticks on ${node.label}`);
      const pub = await subscribePusherJs(c, publicName);
      pub.channel.bind('tick', (data) => ticks.push({ ...data, at: Date.now() }));
      const pres = await subscribePusherJs(c, presenceName);
      subscribers.push({ node, c, watch, ticks, pub, pres, socketBefore: c.connection.socket_id });
      const raw = await RawClient.connect(node, { label: `raw client on ${node.label}` });
      await raw.subscribe(publicName);
      raws.push(raw);
    }
    loop = startTraffic();
    // Traffic flows everywhere before the outage.
    for (const s of subscribers) {
      for (const via of 'ABC') await s.ticks.waitFor((t) => t.via === via, { what: `a tick from ${via} on ${s.node.label}` });
    }

    stoppedAt = Date.now();
    await redis.stop();
    // Every node has answered a trigger with 503 and Redis has been gone for about a second.
    await pollUntil(() => nodes.every((n) => requests.some((r) => r.via === n.label && r.startedAt >= stoppedAt && r.status === 503)),
      { timeout: 3000, what: 'a 503 from every node while Redis is gone' }).catch(() => {});
    for (const node of nodes) {
      const started = Date.now();
      readyDuringOutage.push({ node: node.label, ...(await node.ready().catch((err) => ({ error: err.message }))), ms: Date.now() - started });
    }
    await delay(Math.max(0, OUTAGE_MS - (Date.now() - stoppedAt)));
    await redis.start();
    backAt = Date.now();
  });

  after(async () => {
    if (loop) await loop.stop();
    for (const c of clients) disconnectPusherJs(c);
    for (const r of raws) r.terminate();
    await stopNodes(nodes);
    if (redis) await redis.close();
  });

  it('every daemon process is still running after Redis went away and came back', () => {
    for (const node of nodes) assert.ok(node.running, `node ${node.label} exited: ${JSON.stringify(node.exit)}\n${node.output().slice(-3000)}`);
  });

  it('while Redis is gone, REST triggers and /ready through every node answer 503 at once (no hang)', (t) => {
    const outage = requests.filter((r) => r.startedAt >= stoppedAt && r.startedAt < backAt && r.ms !== null);
    t.diagnostic(`during the outage: ${outage.length} triggers, statuses ${JSON.stringify(countBy(outage.map((r) => r.status)))}`);
    const acceptedAnyway = outage.filter((r) => r.status === 200);
    t.diagnostic(`accepted (200) as Redis went away: ${JSON.stringify(acceptedAnyway.map((r) => ({
      seq: r.seq, via: r.via, afterStopMs: r.startedAt - stoppedAt,
      deliveredOn: subscribers.filter((s) => s.ticks.items.some((tk) => tk.seq === r.seq)).map((s) => s.node.label).join(''),
    })))}`);
    for (const node of nodes) {
      const mine = outage.filter((r) => r.via === node.label);
      const refused = mine.filter((r) => r.status === 503);
      assert.ok(refused.length > 0, `node ${node.label}: no 503 while Redis was gone: ${JSON.stringify(mine.slice(0, 5))}`);
      const slowest = Math.max(...refused.map((r) => r.ms));
      assert.ok(slowest < 1000, `node ${node.label}: a 503 took ${slowest} ms`);
    }
    const hung = requests.filter((r) => r.error !== null);
    assert.deepEqual(hung, [], 'triggers that got no HTTP answer');
    for (const ready of readyDuringOutage) {
      assert.equal(ready.status, 503, `/ready through ${ready.node} while Redis was gone: ${JSON.stringify(ready)}`);
      assert.equal(ready.json?.ready, false, JSON.stringify(ready));
    }
  });

  it('pusher-js clients get pusher:error 4200 and reconnect by themselves', async (t) => {
    for (const r of raws) {
      const closed = await r.waitClose(Math.max(1000, RECOVERY_MS - (Date.now() - backAt)));
      const errors = r.messages.filter((m) => m.event === 'pusher:error');
      assert.deepEqual(errors.map((m) => m.data.code), [4200], `${r.label}: ${JSON.stringify(errors.map((m) => m.raw))}`);
      assert.equal(closed.code, 4200, `${r.label}: close ${closed.code} ${closed.reason}`);
    }
    for (const s of subscribers) {
      const error = await s.watch.errors.waitFor((e) => pusherJsErrorCode(e) === 4200, {
        timeout: Math.max(1000, RECOVERY_MS - (Date.now() - backAt)), what: `error 4200 on ${s.node.label}`,
      });
      assert.ok(error);
      // 4200 means "reconnect now": pusher-js goes back to connecting at once, by itself.
      await s.watch.states.waitFor((st) => st === 'connecting', { what: `connecting again on ${s.node.label}` });
      const index = s.watch.states.items.indexOf('connecting');
      await s.watch.states.waitFor((st) => st === 'connected', { from: index, what: `connected again on ${s.node.label}` });
      assert.notEqual(s.c.connection.socket_id, s.socketBefore, `a new socket on ${s.node.label}`);
      assert.ok(!s.watch.states.items.includes('disconnected'), `states on ${s.node.label}: ${s.watch.states.items}`);
      for (const sub of [s.pub, s.pres]) {
        const again = sub.inbox.filter((e) => e.event === 'pusher:subscription_succeeded');
        if (again.length < 2) {
          await sub.inbox.waitFor((e) => e.event === 'pusher:subscription_succeeded', { from: sub.inbox.items.indexOf(again[0]) + 1, what: `subscribed again on ${s.node.label}` });
        }
      }
    }
    t.diagnostic(`clients reconnected and subscribed again ${Date.now() - backAt} ms after Redis was back; states ${subscribers.map((s) => s.watch.states.items.join('>')).join(' | ')}`);
  });

  it(`within ${RECOVERY_MS / 1000} s of Redis being back, events triggered through each node reach subscribers on every node, and presence member lists agree`, async (t) => {
    resubscribedAt = Date.now();
    const remaining = () => Math.max(500, RECOVERY_MS - (Date.now() - backAt));
    for (const s of subscribers) {
      for (const via of 'ABC') {
        await s.ticks.waitFor((tk) => tk.via === via && requests[tk.seq - 1].startedAt >= resubscribedAt, {
          timeout: remaining(), what: `a tick triggered through ${via} after the recovery, on ${s.node.label}`,
        });
      }
    }
    const expected = ['u-A', 'u-B', 'u-C'];
    await pollUntil(async () => {
      for (const s of subscribers) {
        const ids = [];
        s.pres.channel.members.each((m) => ids.push(m.id));
        if (ids.sort().join() !== expected.join()) return false;
      }
      for (const node of nodes) {
        const res = await node.sdk().get({ path: `/channels/${presenceName}/users` });
        if (res.status !== 200) return false;
        const { users } = await res.json();
        if (byId(users).map((u) => u.id).join() !== expected.join()) return false;
      }
      return true;
    }, { timeout: remaining(), what: 'the same three members on every client and through every node' });
    t.diagnostic(`recovered ${Date.now() - backAt} ms after Redis was back`);
    assert.ok(Date.now() - backAt <= RECOVERY_MS, `recovery took ${Date.now() - backAt} ms`);
  });

  it('afterwards no event is delivered twice (nor lost), and every daemon still runs', async (t) => {
    assert.ok(resubscribedAt, 'the clients never came back');
    // Some more traffic after the recovery: 20 rounds through every node.
    await pollUntil(() => requests.filter((r) => r.startedAt >= resubscribedAt).length >= 20 * nodes.length,
      { timeout: 5000, what: '20 more rounds of triggers' });
    await loop.stop();
    loop = null;
    const finals = [];
    for (const node of nodes) {
      const sdk = node.sdk();
      for (let i = 0; i < 5; i += 1) {
        const id = `${node.label}${i}`;
        finals.push(id);
        const res = await sdk.trigger(publicName, 'final', { id });
        assert.equal(res.status, 200);
      }
      await sdk.trigger(publicName, 'final-barrier', { via: node.label });
    }
    for (const s of subscribers) {
      for (const via of 'ABC') {
        await s.pub.inbox.waitFor((e) => e.event === 'final-barrier' && e.data.via === via, { what: `final barrier from ${via} on ${s.node.label}` });
      }
      const got = s.pub.inbox.filter((e) => e.event === 'final').map((e) => e.data.id);
      assert.deepEqual([...got].sort(), [...finals].sort(), `final events on ${s.node.label}`);
      const after = s.ticks.items.filter((tk) => requests[tk.seq - 1].startedAt >= backAt);
      const seqs = after.map((tk) => tk.seq);
      const twice = seqs.filter((n, i) => seqs.indexOf(n) !== i);
      assert.deepEqual(twice, [], `ticks delivered twice on ${s.node.label} after Redis was back`);
      // Every trigger accepted (200) after the recovery reached this subscriber.
      const accepted = requests.filter((r) => r.startedAt >= resubscribedAt && r.status === 200).map((r) => r.seq);
      const received = new Set(seqs);
      const lost = accepted.filter((n) => !received.has(n));
      assert.deepEqual(lost, [], `ticks accepted after the recovery but never delivered on ${s.node.label}`);
      assert.ok(accepted.length >= 20 * nodes.length, `only ${accepted.length} ticks accepted after the recovery`);
      const all = s.ticks.items.map((tk) => tk.seq);
      t.diagnostic(`${s.node.label}: ${all.length} ticks received of ${seq} sent, ${all.length - new Set(all).size} duplicates over the whole run`);
    }
    for (const node of nodes) assert.ok(node.running, `node ${node.label} exited: ${JSON.stringify(node.exit)}`);
  });
});

function countBy(values) {
  const counts = {};
  for (const v of values) counts[v] = (counts[v] ?? 0) + 1;
  return counts;
}

describe('/ready on a node started while Redis is down', () => {
  let redis;
  let node;

  after(async () => {
    if (node) await node.stop();
    if (redis) await redis.close();
  });

  it('answers 503 while Redis is down, and 200 once Redis is up', async () => {
    redis = new RedisServer(await freePort()); // not started yet
    node = await Daemon.start({
      apps: [appConfig()],
      cluster: redisCluster(redis, { prefix: `soketify-ready-${process.pid}`, nodeTimeout: 2 }),
      detached: true,
      awaitReady: false,
    });
    for (let i = 0; i < 5; i += 1) {
      const ready = await node.ready();
      assert.equal(ready.status, 503, `/ready before Redis exists (try ${i}): ${JSON.stringify(ready)}`);
      assert.equal(ready.json?.ready, false);
      await delay(200);
    }
    await redis.start();
    const ok = await pollUntil(async () => {
      const ready = await node.ready();
      return ready.status === 200 && ready;
    }, { timeout: 5000, what: '/ready 200 once Redis is up' });
    assert.deepEqual(ok.json, { ready: true });
    assert.ok(node.running);
  });
});
