// Laravel Echo 2 (broadcaster 'pusher', building its own pusher-js 8 client from the `Pusher`
// option) against the daemon: presence rooms with here/joining/leaving, whispers (client events)
// through listenForWhisper, and Laravel-style namespaced events on private channels.
// PROTOCOL.md sections 3, 4 and 5.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import Echo from 'laravel-echo';

import {
  APP,
  Daemon,
  Inbox,
  PusherJS,
  appConfig,
  pusherJsOptions,
  sdkAuthOptions,
  uniqueName,
  withTimeout,
} from './helpers.mjs';

function byId(list) {
  return [...list].sort((a, b) => a.id - b.id);
}

describe('Laravel Echo 2 on pusher-js', () => {
  let daemon;
  let node;
  const echos = [];

  /** An Echo instance for a Laravel user {id, name}; resolves once its pusher-js is connected. */
  async function echoFor(user) {
    const { channelAuthorization } = sdkAuthOptions(node, {
      presenceData: () => ({ user_id: user.id, user_info: user }),
    });
    const echo = new Echo({
      broadcaster: 'pusher',
      Pusher: PusherJS,
      key: APP.key,
      ...pusherJsOptions(daemon),
      channelAuthorization,
    });
    echos.push(echo);
    const pusher = echo.connector.pusher;
    await withTimeout(
      new Promise((resolve) => {
        if (pusher.connection.state === 'connected') resolve();
        pusher.connection.bind('connected', resolve);
      }),
      5000,
      `Echo for user ${user.id} to connect`,
    );
    assert.equal(echo.connectionStatus(), 'connected');
    return echo;
  }

  before(async () => {
    daemon = await Daemon.start({ apps: [appConfig()] });
    node = daemon.sdk();
  });

  after(async () => {
    for (const echo of echos) echo.disconnect();
    if (daemon) await daemon.stop();
  });

  it('Echo.join: here lists the members, joining and leaving fire for the other user', async () => {
    const room = uniqueName('room');
    const taylor = { id: 1, name: 'Taylor' };
    const jess = { id: 2, name: 'Jess' };

    const e1 = await echoFor(taylor);
    const log1 = new Inbox('taylor room callbacks');
    const ch1 = e1.join(room)
      .here((users) => log1.push({ kind: 'here', users }))
      .joining((user) => log1.push({ kind: 'joining', user }))
      .leaving((user) => log1.push({ kind: 'leaving', user }))
      .error((err) => log1.push({ kind: 'error', err }));
    assert.equal(ch1.name, `presence-${room}`);
    const here1 = await log1.waitFor((e) => e.kind !== 'joining', { what: 'here for taylor' });
    assert.deepEqual(here1, { kind: 'here', users: [taylor] });

    const e2 = await echoFor(jess);
    const log2 = new Inbox('jess room callbacks');
    e2.join(room).here((users) => log2.push({ kind: 'here', users }));
    const here2 = await log2.waitFor(() => true, { what: 'here for jess' });
    assert.deepEqual(byId(here2.users), [taylor, jess]);

    const joined = await log1.waitFor((e) => e.kind === 'joining', { what: 'joining for jess' });
    assert.deepEqual(joined.user, jess);

    e2.leave(room);
    const left = await log1.waitFor((e) => e.kind === 'leaving', { what: 'leaving for jess' });
    assert.deepEqual(left.user, jess);
    assert.equal(log1.filter((e) => e.kind === 'error').length, 0);
  });

  it('a whisper from one Echo client reaches the other through listenForWhisper, not the sender', async () => {
    const room = uniqueName('chat');
    const e1 = await echoFor({ id: 11, name: 'Ann' });
    const e2 = await echoFor({ id: 12, name: 'Ben' });

    const heard1 = new Inbox('whispers heard by Ann');
    const heard2 = new Inbox('whispers heard by Ben');
    const subscribed = [new Inbox('Ann subscribed'), new Inbox('Ben subscribed')];
    const ch1 = e1.join(room).here(() => subscribed[0].push(true)).listenForWhisper('typing', (d) => heard1.push(d));
    const ch2 = e2.join(room).here(() => subscribed[1].push(true)).listenForWhisper('typing', (d) => heard2.push(d));
    await subscribed[0].waitFor(() => true, { what: 'Ann in the room' });
    await subscribed[1].waitFor(() => true, { what: 'Ben in the room' });

    ch2.whisper('typing', { name: 'Ben', typing: true });
    assert.deepEqual(await heard1.waitFor(() => true, { what: 'whisper from Ben' }), { name: 'Ben', typing: true });

    // Ann answers; when Ben hears it, his own whisper would have come back before it if echoed.
    ch1.whisper('typing', { name: 'Ann', typing: false });
    await heard2.waitFor(() => true, { what: 'whisper from Ann' });
    assert.deepEqual(heard2.items, [{ name: 'Ann', typing: false }]);
    assert.deepEqual(heard1.items, [{ name: 'Ben', typing: true }]);
  });

  it('Echo.private(...).listen receives a namespaced Laravel event (App\\Events\\...) and a dot-prefixed one from the Node SDK', async () => {
    const e1 = await echoFor({ id: 21, name: 'Cy' });
    const name = uniqueName('orders');
    const got = new Inbox('order events');
    const subscribed = new Inbox('subscribed');
    e1.private(name)
      .subscribed(() => subscribed.push(true))
      .listen('OrderShipped', (d) => got.push({ kind: 'namespaced', d }))
      .listen('.order.refunded', (d) => got.push({ kind: 'raw', d }));
    await subscribed.waitFor(() => true, { what: `private-${name} subscribed` });

    await node.trigger(`private-${name}`, 'App\\Events\\OrderShipped', { order: { id: 5 } });
    await node.trigger(`private-${name}`, 'order.refunded', { order: { id: 6 } });
    assert.deepEqual(await got.waitFor((e) => e.kind === 'namespaced', { what: 'App\\Events\\OrderShipped' }), {
      kind: 'namespaced', d: { order: { id: 5 } },
    });
    assert.deepEqual(await got.waitFor((e) => e.kind === 'raw', { what: 'order.refunded' }), {
      kind: 'raw', d: { order: { id: 6 } },
    });
  });
});
