// Two apps in one daemon are isolated: same channel names do not mix, one app's key/secret
// cannot authorize the other's channels or users, and one app's REST credentials cannot read,
// trigger into or terminate in the other app. PROTOCOL.md sections 4, 6 and 7.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import {
  Daemon,
  Inbox,
  appConfig,
  connectPusherJs,
  disconnectPusherJs,
  pusherJsErrorCode,
  pyOk,
  sdkAuthOptions,
  sdkError,
  subscribePusherJs,
  uniqueName,
  watchPusherJs,
} from './helpers.mjs';

const A = Object.freeze({ id: '100031', key: 'app-a-key', secret: 'app-a-secret' });
const B = Object.freeze({ id: '100032', key: 'app-b-key', secret: 'app-b-secret' });

describe('isolation between two apps in one daemon', () => {
  let daemon;
  let sdkA;
  let sdkB;
  const clients = [];

  async function client(app, options = {}) {
    const c = await connectPusherJs(daemon, { key: app.key, ...options });
    clients.push(c);
    return c;
  }

  async function outcome(c, name) {
    const channel = c.subscribe(name);
    const inbox = new Inbox(`outcome on ${name}`);
    channel.bind_global((event, data) => inbox.push({ event, data }));
    return inbox.waitFor((e) => e.event === 'pusher:subscription_succeeded' || e.event === 'pusher:subscription_error', {
      what: `subscription outcome on ${name}`,
    });
  }

  before(async () => {
    daemon = await Daemon.start({ apps: [appConfig(A), appConfig(B)] });
    sdkA = daemon.sdk(A);
    sdkB = daemon.sdk(B);
  });

  after(async () => {
    for (const c of clients) disconnectPusherJs(c);
    if (daemon) await daemon.stop();
  });

  it('a client of app A never receives app B events on the same channel name (public and private)', async () => {
    for (const name of [uniqueName('shared'), uniqueName('private-shared')]) {
      const a = await client(A, sdkAuthOptions(sdkA));
      const b = await client(B, sdkAuthOptions(sdkB));
      const { inbox: inA } = await subscribePusherJs(a, name);
      const { inbox: inB } = await subscribePusherJs(b, name);

      await sdkB.trigger(name, 'from-b', { app: 'B' });
      await sdkA.trigger(name, 'from-a', { app: 'A' });
      await inA.waitFor((e) => e.event === 'from-a', { what: `from-a on ${name}` });
      await inB.waitFor((e) => e.event === 'from-b', { what: `from-b on ${name}` });
      await sdkB.trigger(name, 'barrier-b', {});
      await inB.waitFor((e) => e.event === 'barrier-b', { what: `barrier-b on ${name}` });

      assert.equal(inA.filter((e) => e.event === 'from-b' || e.event === 'barrier-b').length, 0, JSON.stringify(inA.items));
      assert.equal(inB.filter((e) => e.event === 'from-a').length, 0, JSON.stringify(inB.items));
    }
  });

  it('presence members and cache contents are per app', async () => {
    const room = uniqueName('presence-shared');
    const a = await client(A, sdkAuthOptions(sdkA, { presenceData: () => ({ user_id: 'a-user', user_info: {} }) }));
    const b = await client(B, sdkAuthOptions(sdkB, { presenceData: () => ({ user_id: 'b-user', user_info: {} }) }));
    const { channel: chA } = await subscribePusherJs(a, room);
    const { channel: chB } = await subscribePusherJs(b, room);
    assert.equal(chA.members.count, 1);
    assert.equal(chB.members.count, 1);
    assert.deepEqual(await (await sdkA.get({ path: `/channels/${room}/users` })).json(), { users: [{ id: 'a-user' }] });
    assert.deepEqual(await (await sdkB.get({ path: `/channels/${room}/users` })).json(), { users: [{ id: 'b-user' }] });

    const cache = uniqueName('cache-shared');
    await sdkB.trigger(cache, 'state', { app: 'B' });
    const { inbox } = await subscribePusherJs(await client(A), cache);
    await inbox.waitFor((e) => e.event === 'pusher:cache_miss', { what: 'cache_miss in app A' });
    assert.equal(inbox.filter((e) => e.event === 'state').length, 0);
  });

  it("app B's key and secret cannot authorize app A's private channels or sign in to app A", async () => {
    // B's SDK as auth endpoint: auth is "app-b-key:<B signature>".
    const c1 = await client(A, sdkAuthOptions(sdkB));
    const r1 = await outcome(c1, uniqueName('private-a-only'));
    assert.equal(r1.event, 'pusher:subscription_error');
    assert.equal(r1.data.status, 401);

    // A's key with a signature made with B's secret.
    const mixed = daemon.sdk({ ...A, secret: B.secret });
    const c2 = await client(A, sdkAuthOptions(mixed));
    const r2 = await outcome(c2, uniqueName('private-a-only'));
    assert.equal(r2.event, 'pusher:subscription_error');
    assert.equal(r2.data.status, 401);
    assert.equal(c2.connection.state, 'connected');

    // Sign-in to app A with B's credentials.
    const c3 = await client(A, sdkAuthOptions(sdkB, { userData: () => ({ id: 'intruder' }) }));
    const watch = watchPusherJs(c3);
    c3.signin();
    await watch.errors.waitFor((e) => pusherJsErrorCode(e) === 4009, { what: 'error 4009' });
    await watch.states.waitFor((s) => s === 'disconnected', { what: 'state disconnected' });
  });

  it("app B's REST credentials cannot read or trigger in app A (Node and Python SDKs get 401)", async () => {
    const name = uniqueName('a-occupied');
    const { inbox } = await subscribePusherJs(await client(A), name);

    const bOnA = daemon.sdk({ id: A.id, key: B.key, secret: B.secret });
    const mixed = daemon.sdk({ id: A.id, key: A.key, secret: B.secret });
    for (const sdk of [bOnA, mixed]) {
      assert.equal((await sdkError(sdk.get({ path: '/channels' }))).status, 401);
      assert.equal((await sdkError(sdk.get({ path: `/channels/${name}` }))).status, 401);
      assert.equal((await sdkError(sdk.trigger(name, 'intrusion', {}))).status, 401);
    }
    const py = await daemon.py(
      [{ op: 'channels_info' }, { op: 'channel_info', channel: name }, { op: 'trigger', channels: [name], event: 'intrusion', data: {} }],
      { id: A.id, key: B.key, secret: B.secret },
    );
    for (const r of py) {
      assert.equal(r.ok, false, JSON.stringify(r));
      assert.equal(r.status, 401, JSON.stringify(r));
    }

    // B's own view does not include A's channel.
    const own = await (await sdkB.get({ path: '/channels', params: { filter_by_prefix: name } })).json();
    assert.deepEqual(own, { channels: {} });

    await sdkA.trigger(name, 'legit', {});
    await inbox.waitFor((e) => e.event === 'legit', { what: 'legit event' });
    assert.equal(inbox.filter((e) => e.event === 'intrusion').length, 0);
  });

  it("terminating a user id with app B's credentials leaves app A's user of the same id connected", async () => {
    const id = uniqueName('same-id');
    async function signedIn(app, sdk) {
      const c = await client(app, sdkAuthOptions(sdk, { userData: () => ({ id }) }));
      const watch = watchPusherJs(c);
      c.signin();
      await watch.messages.waitFor((m) => m.event === 'pusher_internal:subscription_succeeded' && m.channel === `#server-to-user-${id}`, {
        what: `signed in to ${app.id}`,
      });
      return { c, watch };
    }
    const inA = await signedIn(A, sdkA);
    const inB = await signedIn(B, sdkB);
    const noticesA = new Inbox('A user events');
    inA.c.user.bind('notice', (d) => noticesA.push(d));

    // Node SDK with B's credentials on A's path: refused.
    const bOnA = daemon.sdk({ id: A.id, key: B.key, secret: B.secret });
    assert.equal((await sdkError(bOnA.terminateUserConnections(id))).status, 401);
    // Python SDK path has no app id: the app is B (from auth_key).
    await pyOk(daemon, [{ op: 'terminate_user_connections', user_id: id }], B);
    await inB.watch.errors.waitFor((e) => pusherJsErrorCode(e) === 4009, { what: 'B user closed 4009' });

    // B's sendToUser does not reach A's user; A's does.
    await sdkB.sendToUser(id, 'notice', { from: 'B' });
    await sdkA.sendToUser(id, 'notice', { from: 'A' });
    await noticesA.waitFor(() => true, { what: 'notice from A' });
    assert.deepEqual(noticesA.items, [{ from: 'A' }]);
    assert.equal(inA.c.connection.state, 'connected');
    assert.deepEqual(inA.watch.states.items, []);
  });
});
