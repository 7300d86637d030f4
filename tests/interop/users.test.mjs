// User features with pusher-js 8 (`userAuthentication.customHandler` signing with the Node SDK's
// authenticateUser): pusher.signin(), server-to-user events from both SDKs (sendToUser /
// send_to_user), connection termination from both SDKs (terminateUserConnections /
// terminate_user_connections), the watchlist, and apps requiring authorized connections.
// PROTOCOL.md sections 1 (close codes) and 6.

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
  pusherJsErrorCode,
  pyOk,
  sdkAuthOptions,
  uniqueName,
  watchPusherJs,
  signInPusherJs,
  userInbox,
} from './helpers.mjs';

const AUTHZ_APP = Object.freeze({ id: '100021', key: 'authz-key', secret: 'authz-secret' });
const AUTHORIZATION_TIMEOUT = 1;
const MAX_WATCHLIST = 5;

describe('users: sign-in, server-to-user, termination, watchlist, authorized connections', () => {
  let daemon;
  let node;
  const clients = [];
  const raws = [];

  async function client(options = {}) {
    const c = await connectPusherJs(daemon, options);
    clients.push(c);
    return c;
  }

  async function raw(key = APP.key) {
    const r = await RawClient.connect(daemon, { key });
    raws.push(r);
    return r;
  }

  /**
   * A pusher-js client signed in with `userData` (signed by `sdk`); resolves once
   * pusher:signin_success came and #server-to-user-{id} is subscribed.
   * Returns {c, watch, watchlist} (watchlist: Inbox of pusher.user.watchlist events).
   */
  async function signedIn(userData, { key = APP.key, sdk = node } = {}) {
    const c = await client({ key, ...sdkAuthOptions(sdk, { userData: () => userData }) });
    return { c, ...(await signInPusherJs(c, userData.id)) };
  }


  /** pusher-js was closed with 4009 and gave up: error 4009 seen, state disconnected. */
  async function assertRefused4009(watch, c) {
    await watch.errors.waitFor((e) => pusherJsErrorCode(e) === 4009, { what: 'error 4009' });
    await watch.states.waitFor((s) => s === 'disconnected', { what: 'state disconnected' });
    assert.equal(c.connection.state, 'disconnected');
  }

  /** After a later barrier: the client never tried again (no state after 'disconnected'). */
  function assertNoReconnect(watch, c) {
    const states = watch.states.items;
    assert.equal(states[states.length - 1], 'disconnected', `states: ${states}`);
    assert.ok(!states.slice(states.indexOf('disconnected')).includes('connecting'), `states: ${states}`);
    assert.equal(c.connection.state, 'disconnected');
  }

  before(async () => {
    daemon = await Daemon.start({
      apps: [
        appConfig(),
        appConfig({ ...AUTHZ_APP, authorized_connections: true, authorization_timeout: AUTHORIZATION_TIMEOUT }),
      ],
      limits: { max_watchlist_size: MAX_WATCHLIST },
    });
    node = daemon.sdk();
  });

  after(async () => {
    for (const c of clients) disconnectPusherJs(c);
    for (const r of raws) r.terminate();
    if (daemon) await daemon.stop();
  });

  it('pusher.signin() gets pusher:signin_success with the same user_data and pusher.user.user_data is set', async () => {
    const id = uniqueName('signin');
    const userData = { id, user_info: { name: 'Signed In' } };
    const { c, watch } = await signedIn(userData);
    const success = watch.messages.items.find((m) => m.event === 'pusher:signin_success');
    assert.equal(success.data.user_data, JSON.stringify(userData));
    assert.deepEqual(c.user.user_data, userData);
    assert.equal(c.connection.state, 'connected');
  });

  it('pusher.user.bind receives sendToUser (Node SDK) and send_to_user (Python SDK) on every connection of that user only', async () => {
    const id = uniqueName('target');
    const other = uniqueName('bystander');
    const { c: c1 } = await signedIn({ id });
    const { c: c2 } = await signedIn({ id });
    const { c: c3 } = await signedIn({ id: other });
    const in1 = userInbox(c1, 'notice');
    const in2 = userInbox(c2, 'notice');
    const in3 = userInbox(c3, 'notice');

    const res = await node.sendToUser(id, 'notice', { from: 'node', n: 1 });
    assert.equal(res.status, 200);
    assert.deepEqual((await in1.waitFor(() => true, { what: 'node notice on connection 1' })), { from: 'node', n: 1 });
    assert.deepEqual((await in2.waitFor(() => true, { what: 'node notice on connection 2' })), { from: 'node', n: 1 });

    await pyOk(daemon, [{ op: 'send_to_user', user_id: id, event: 'notice', data: { from: 'python', n: 2 } }]);
    await in1.waitFor((d) => d.from === 'python', { what: 'python notice on connection 1' });
    await in2.waitFor((d) => d.from === 'python', { what: 'python notice on connection 2' });

    // Barrier for the bystander: its own event arrives, and nothing of the target's before it.
    await node.sendToUser(other, 'notice', { from: 'node', for: 'bystander' });
    await in3.waitFor(() => true, { what: 'bystander notice' });
    assert.deepEqual(in3.items, [{ from: 'node', for: 'bystander' }]);
  });

  it('a sign-in signed with the wrong secret gets error 4009, close 4009, and pusher-js does not reconnect', async () => {
    const forger = daemon.sdk({ ...APP, secret: 'wrong-secret' });
    const c = await client(sdkAuthOptions(forger, { userData: () => ({ id: 'mallory' }) }));
    const watch = watchPusherJs(c);
    c.signin();
    await assertRefused4009(watch, c);
    const barrier = await raw();
    await barrier.sync();
    assertNoReconnect(watch, c);
  });

  it('#server-to-user-{id} is only for the signed-in id; re-signing in as another user closes 4009', async () => {
    const frank = uniqueName('frank');
    const grace = uniqueName('grace');
    const r = await raw();
    r.send({ event: 'pusher:subscribe', data: { channel: `#server-to-user-${frank}`, auth: '' } });
    await r.waitEvent('pusher:subscription_error', { channel: `#server-to-user-${frank}` });

    r.send({ event: 'pusher:signin', data: node.authenticateUser(r.socketId, { id: frank }) });
    await r.waitEvent('pusher:signin_success');
    r.send({ event: 'pusher:subscribe', data: { channel: `#server-to-user-${grace}`, auth: '' } });
    await r.waitEvent('pusher:subscription_error', { channel: `#server-to-user-${grace}` });
    await r.subscribe(`#server-to-user-${frank}`);

    await node.sendToUser(grace, 'for-grace', {});
    await node.sendToUser(frank, 'for-frank', {});
    await r.waitEvent('for-frank');
    assert.equal(r.messages.filter((m) => m.event === 'for-grace').length, 0);

    r.send({ event: 'pusher:signin', data: node.authenticateUser(r.socketId, { id: grace }) });
    const closed = await r.waitClose();
    assert.equal(closed.code, 4009);
  });

  for (const [sdkName, terminate] of [
    ['Node SDK terminateUserConnections', (d, n, id) => n.terminateUserConnections(id).then((res) => res.json())],
    ['Python SDK terminate_user_connections', (d, n, id) => pyOk(d, [{ op: 'terminate_user_connections', user_id: id }]).then(([r]) => r)],
  ]) {
    it(`${sdkName} closes every connection of that user with 4009 and pusher-js stays disconnected`, async () => {
      const victim = uniqueName('victim');
      const survivor = uniqueName('survivor');
      const a = await signedIn({ id: victim });
      const b = await signedIn({ id: victim });
      const s = await signedIn({ id: survivor });
      const sInbox = userInbox(s.c, 'still-here');

      assert.deepEqual(await terminate(daemon, node, victim), {});
      await assertRefused4009(a.watch, a.c);
      await assertRefused4009(b.watch, b.c);

      await node.sendToUser(survivor, 'still-here', { ok: true });
      await sInbox.waitFor(() => true, { what: 'event for the survivor' });
      assert.equal(s.c.connection.state, 'connected');
      assert.deepEqual(s.watch.states.items, []);
      assertNoReconnect(a.watch, a.c);
      assertNoReconnect(b.watch, b.c);
    });
  }

  it('terminating a user with no connections answers {}', async () => {
    const res = await node.terminateUserConnections(uniqueName('nobody'));
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {});
  });

  it('pusher.user.watchlist sees a watched user come online and go offline (once for two connections)', async () => {
    const bob = uniqueName('wl-bob');
    const carol = uniqueName('wl-carol');
    const alice = await signedIn({ id: uniqueName('wl-alice'), watchlist: [bob, carol] });
    const initial = await alice.watchlist.waitFor((e) => e.name === 'offline', { what: 'initial offline event' });
    assert.deepEqual([...initial.user_ids].sort(), [bob, carol].sort());
    assert.equal(alice.watchlist.filter((e) => e.name === 'online').length, 0);

    const from = alice.watchlist.items.length;
    const bob1 = await signedIn({ id: bob });
    const online = await alice.watchlist.waitFor((e) => e.name === 'online', { what: 'bob online', from });
    assert.deepEqual(online.user_ids, [bob]);

    // bob's second connection: no second "online"; when it leaves, bob is still online.
    const bob2 = await RawClient.connect(daemon);
    raws.push(bob2);
    bob2.send({ event: 'pusher:signin', data: node.authenticateUser(bob2.socketId, { id: bob }) });
    await bob2.waitEvent('pusher:signin_success');
    bob2.ws.close(1000);
    await bob2.waitClose();
    const aliceEvents = userInbox(alice.c, 'barrier');
    await node.sendToUser(alice.c.user.user_data.id, 'barrier', {});
    await aliceEvents.waitFor(() => true, { what: 'barrier for alice' });
    const changes = alice.watchlist.items.slice(from);
    assert.deepEqual(changes, [{ name: 'online', user_ids: [bob] }], JSON.stringify(changes));

    bob1.c.disconnect();
    const offline = await alice.watchlist.waitFor((e) => e.name === 'offline', { what: 'bob offline', from });
    assert.deepEqual(offline.user_ids, [bob]);
  });

  it(`a watchlist over ${MAX_WATCHLIST} ids gets pusher:error 4302 while the sign-in still succeeds`, async () => {
    const ids = Array.from({ length: MAX_WATCHLIST + 1 }, (_, i) => `big-wl-${i}`);
    const { c, watch } = await signedIn({ id: uniqueName('big-watcher'), watchlist: ids });
    await watch.errors.waitFor((e) => pusherJsErrorCode(e) === 4302, { what: 'error 4302' });
    assert.equal(c.connection.state, 'connected');
    assert.deepEqual(watch.states.items, []);
  });

  it(`authorized_connections: unauthorized connections are closed with 4009 after ${AUTHORIZATION_TIMEOUT} s; signed-in and private-channel ones stay`, async () => {
    const sdk = daemon.sdk(AUTHZ_APP);
    const member = uniqueName('authorized');
    const signed = await signedIn({ id: member }, { key: AUTHZ_APP.key, sdk });
    const privateRaw = await raw(AUTHZ_APP.key);
    const privateName = uniqueName('private-authz');
    privateRaw.send({
      event: 'pusher:subscribe',
      data: { channel: privateName, auth: sdk.authorizeChannel(privateRaw.socketId, privateName).auth },
    });
    await privateRaw.waitEvent('pusher_internal:subscription_succeeded', { channel: privateName });

    const started = Date.now();
    const idleRaw = await raw(AUTHZ_APP.key);
    const idleJs = await client({ key: AUTHZ_APP.key });
    const idleWatch = watchPusherJs(idleJs);

    const closed = await idleRaw.waitClose((AUTHORIZATION_TIMEOUT + 4) * 1000);
    assert.equal(closed.code, 4009);
    assert.ok(Date.now() - started >= AUTHORIZATION_TIMEOUT * 1000 * 0.5, `closed after ${Date.now() - started} ms`);
    await assertRefused4009(idleWatch, idleJs);

    // The authorized ones were connected earlier, so their deadline has passed too.
    const notices = userInbox(signed.c, 'still-authorized');
    await sdk.sendToUser(member, 'still-authorized', {});
    await notices.waitFor(() => true, { what: 'event for the signed-in client' });
    await privateRaw.sync();
    assert.equal(privateRaw.close, null);
    assert.equal(signed.c.connection.state, 'connected');
    assert.deepEqual(signed.watch.states.items, []);
    assertNoReconnect(idleWatch, idleJs);
  });
});
