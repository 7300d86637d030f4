// SIGHUP reload (issue 11): the config file edited and read again while unmodified pusher-js clients
// stay connected: a new app works at once, a rotated secret signs from then on, a removed app's
// clients are told 4001, a broken file changes nothing, and an ssl: listener serves its new
// certificate to new handshakes. Once with one process, once with a supervisor and two workers;
// then two Redis cluster nodes, each reloading its own file.
// The certificate is self-signed: this test process trusts any (as tls.test.mjs).
process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';

import {
  Daemon,
  PYTHON,
  RedisServer,
  appConfig,
  childPids,
  connectPusherJs,
  disconnectPusherJs,
  pusherJsErrorCode,
  redisCluster,
  sdkAuthOptions,
  startNodes,
  stopNodes,
  subscribePusherJs,
  uniqueName,
  watchPusherJs,
} from './helpers.mjs';
import { WebhookReceiver, isHook } from './webhook_helpers.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const FIRST = appConfig({ id: '1001', key: 'first-key', secret: 'first-secret' });
const DOOMED = appConfig({ id: '1002', key: 'doomed-key', secret: 'doomed-secret' });
const ADDED = appConfig({ id: '1003', key: 'added-key', secret: 'added-secret' });

/** The SHA-256 fingerprint of the certificate a new TLS handshake on `port` gets. */
function certificateOf(port) {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      resolve(socket.getPeerCertificate().fingerprint256);
      socket.end();
    });
    socket.on('error', reject);
  });
}

for (const workers of [1, 2]) {
  describe(`SIGHUP reload (workers = ${workers})`, () => {
    let daemon;
    const clients = [];

    before(async () => {
      daemon = await Daemon.start({ apps: [FIRST, DOOMED], tls: true, server: { workers } });
    });

    after(async () => {
      for (const c of clients) disconnectPusherJs(c);
      if (daemon) await daemon.stop();
    });

    it('applies a new app, a rotated secret and a removed app without dropping anyone else', async () => {
      // Enough clients that, with two workers, both have some (the kernel spreads them).
      const kept = [];
      for (let i = 0; i < 6; i += 1) {
        const client = await connectPusherJs(daemon, { key: FIRST.key });
        clients.push(client);
        const name = uniqueName('kept');
        kept.push({ client, name, socketId: client.connection.socket_id, ...(await subscribePusherJs(client, name)) });
      }
      const doomed = await connectPusherJs(daemon, { key: DOOMED.key });
      clients.push(doomed);
      const doomedWatch = watchPusherJs(doomed);
      const workersBefore = childPids(daemon.proc.pid);

      const rotated = { ...FIRST, secret: 'first-rotated' };
      const line = await daemon.reload({ apps: [rotated, ADDED] });
      assert.match(line, /Reloaded .*1 added \(1003\), 1 removed \(1002\)/);

      // The removed app's client is told why, and pusher-js does not come back.
      await doomedWatch.errors.waitFor((e) => pusherJsErrorCode(e) === 4001, { what: 'pusher-js error 4001' });
      // Every other client is still on its first connection, and hears events signed with the new secret.
      for (const { client, name, socketId, inbox } of kept) {
        assert.equal(client.connection.state, 'connected');
        assert.equal(client.connection.socket_id, socketId);
        await daemon.sdk(rotated).trigger(name, 'after-reload', { n: 1 });
        assert.deepEqual((await inbox.waitFor((e) => e.event === 'after-reload')).data, { n: 1 });
      }
      await assert.rejects(daemon.sdk(FIRST).trigger(kept[0].name, 'old-secret', {}), (err) => err.status === 401);
      // The new app serves at once, on every worker.
      for (let i = 0; i < 4; i += 1) {
        const client = await connectPusherJs(daemon, { key: ADDED.key });
        clients.push(client);
        const name = uniqueName('added');
        const { inbox } = await subscribePusherJs(client, name);
        await daemon.sdk(ADDED).trigger(name, 'hello', { i });
        assert.deepEqual((await inbox.waitFor((e) => e.event === 'hello')).data, { i });
      }
      // Nobody was restarted to get there.
      assert.deepEqual(childPids(daemon.proc.pid), workersBefore);
    });

    it('keeps the running config when the new file has problems, and says what they are', async () => {
      const line = await daemon.reload({}, {
        text: '[limits]\nmax_batch_events = -1\n\n[[apps]]\nid = "x"\nkey = "first-key"\n',
      });
      assert.match(line, /Reload refused: 2 problems/);
      assert.match(daemon.output(), /limits\.max_batch_events: must not be negative/);
      assert.match(daemon.output(), /apps\[0\]\.secret: missing/);
      const client = await connectPusherJs(daemon, { key: ADDED.key });
      clients.push(client);
      const name = uniqueName('still');
      const { inbox } = await subscribePusherJs(client, name);
      await daemon.sdk(ADDED).trigger(name, 'still', {});
      await inbox.waitFor((e) => e.event === 'still');
    });

    it('names the settings that need a restart and keeps them', async () => {
      const line = await daemon.reload({ server: { workers, max_message_size: 1000 } });
      assert.match(line, /Reloaded/);
      assert.match(daemon.output(), /need a restart.*server\.max_message_size/);
    });

    it('serves a renewed certificate to new TLS handshakes, keeping open wss clients', async () => {
      const wss = await connectPusherJs(daemon, { key: ADDED.key, forceTLS: true, wssPort: daemon.tlsPort });
      clients.push(wss);
      const socketId = wss.connection.socket_id;
      const before = await certificateOf(daemon.tlsPort);
      const made = spawnSync(PYTHON, [path.join(HERE, 'make_cert.py'), daemon.tlsKey, daemon.tlsCert],
        { encoding: 'utf8' });
      assert.equal(made.status, 0, made.stderr);
      await daemon.reload({});
      // With two workers each reloads its own listener: every new handshake gets the new one.
      for (let i = 0; i < 6; i += 1) assert.notEqual(await certificateOf(daemon.tlsPort), before);
      assert.equal(wss.connection.state, 'connected');
      assert.equal(wss.connection.socket_id, socketId);
    });
  });
}

describe('SIGHUP reload on two nodes of a Redis cluster (each reloads its own file)', () => {
  let redis;
  let receiver;
  let nodes = [];
  const clients = [];

  before(async () => {
    receiver = await WebhookReceiver.start({ app: ADDED });
    redis = await RedisServer.start();
    nodes = await startNodes(2, { apps: [FIRST], cluster: redisCluster(redis, { prefix: uniqueName('reload') }) });
  });

  after(async () => {
    for (const c of clients) disconnectPusherJs(c);
    await stopNodes(nodes);
    if (redis) await redis.stop();
    if (receiver) await receiver.stop();
  });

  it('an app added on both nodes spans the cluster: events and presence members cross nodes', async () => {
    const kept = await connectPusherJs(nodes[0], { key: FIRST.key });
    clients.push(kept);
    const socketId = kept.connection.socket_id;
    // The new app comes with a webhook: the Redis scripts must learn that it wants channel_occupied.
    const hooked = { ...ADDED, webhooks: [{ url: receiver.url('/hooks'), event_types: ['channel_occupied'] }] };
    for (const node of nodes) assert.match(await node.reload({ apps: [FIRST, hooked] }), /Reloaded .*1 added/);
    const name = uniqueName('presence-added');
    const members = [];
    for (const [i, node] of nodes.entries()) {
      const client = await connectPusherJs(node, {
        key: ADDED.key, ...sdkAuthOptions(node.sdk(ADDED), { presenceData: () => ({ user_id: `u${i}` }) }),
      });
      clients.push(client);
      members.push({ client, ...(await subscribePusherJs(client, name)) });
    }
    // The member on node 0 hears the one who joined through node 1.
    await members[0].inbox.waitFor((e) => e.event === 'pusher:member_added' && e.data.id === 'u1');
    await nodes[1].sdk(ADDED).trigger(name, 'across', { ok: true });
    for (const { inbox } of members) await inbox.waitFor((e) => e.event === 'across');
    assert.equal(kept.connection.socket_id, socketId);
    await receiver.waitEvent('/hooks', isHook('channel_occupied', name), { what: 'channel_occupied of the new app' });
  });
});
