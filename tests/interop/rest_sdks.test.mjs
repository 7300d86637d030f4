// REST queries through the official server SDKs: /channels, /channels/{name}, and `info`
// on trigger and batch. PROTOCOL.md section 7.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { APP, Daemon, RawClient, appConfig, pollUntil, pyOk, sdkError, signedRequest, uniqueName } from './helpers.mjs';

describe('REST queries with the Node and Python server SDKs', () => {
  let daemon;
  let node;
  const raws = [];

  // subscription_count is enabled so that info=subscription_count is available whichever way
  // the server ties it to the app setting.
  before(async () => {
    daemon = await Daemon.start({ apps: [appConfig({ subscription_count: true })] });
    node = daemon.sdk();
  });

  after(async () => {
    for (const r of raws) r.terminate();
    if (daemon) await daemon.stop();
  });

  async function subscriber(...channels) {
    const r = await RawClient.connect(daemon);
    raws.push(r);
    for (const ch of channels) await r.subscribe(ch);
    return r;
  }

  async function getJson(path, params) {
    const res = await node.get({ path, params });
    assert.equal(res.status, 200);
    return res.json();
  }

  it('GET / answers 200 and GET /ready answers 200 while the server runs', async () => {
    for (const path of ['/', '/ready']) {
      const res = await fetch(`${daemon.baseUrl}${path}`);
      await res.arrayBuffer();
      assert.equal(res.status, 200, path);
    }
  });

  it('Node SDK GET /channels with filter_by_prefix lists exactly the occupied channels under that prefix', async () => {
    const prefix = uniqueName('list');
    const [a, b, vacated] = [`${prefix}-a`, `${prefix}-b`, `${prefix}-vacated`];
    await subscriber(a, b);
    await subscriber(b);
    const leaver = await subscriber(vacated);
    leaver.send({ event: 'pusher:unsubscribe', data: { channel: vacated } });
    await leaver.sync();
    await subscriber(uniqueName('elsewhere'));
    const body = await getJson('/channels', { filter_by_prefix: prefix });
    assert.deepEqual(body, { channels: { [a]: {}, [b]: {} } });
  });

  it('Node SDK GET /channels without a filter includes occupied channels of every prefix', async () => {
    const [x, y] = [uniqueName('all-x'), uniqueName('all-y')];
    await subscriber(x, y);
    const body = await getJson('/channels');
    assert.ok(body.channels && typeof body.channels === 'object', JSON.stringify(body));
    assert.deepEqual(body.channels[x], {});
    assert.deepEqual(body.channels[y], {});
  });

  it('Python SDK channels_info with prefix_filter lists exactly the occupied channels under that prefix', async () => {
    const prefix = uniqueName('pylist');
    const [a, b] = [`${prefix}-a`, `${prefix}-b`];
    await subscriber(a, b);
    await subscriber(uniqueName('pyelsewhere'));
    const [body] = await pyOk(daemon, [{ op: 'channels_info', prefix_filter: prefix }]);
    assert.deepEqual(body, { channels: { [a]: {}, [b]: {} } });
  });

  it('GET /channels with info=user_count and a non-presence prefix answers 400 with a JSON error', async () => {
    const err = await sdkError(node.get({ path: '/channels', params: { filter_by_prefix: 'public-', info: 'user_count' } }));
    assert.equal(err.status, 400);
    assert.equal(typeof JSON.parse(err.body).error, 'string');
  });

  it('Node SDK GET /channels/{name} with info=subscription_count reports occupied and the count', async () => {
    const name = uniqueName('info');
    await subscriber(name);
    await subscriber(name);
    await subscriber(name, uniqueName('info-other'));
    const body = await getJson(`/channels/${name}`, { info: 'subscription_count' });
    assert.deepEqual(body, { occupied: true, subscription_count: 3 });
  });

  it('Python SDK channel_info with subscription_count reports occupied and the count', async () => {
    const name = uniqueName('pyinfo');
    await subscriber(name);
    await subscriber(name);
    const [body] = await pyOk(daemon, [{ op: 'channel_info', channel: name, attributes: ['subscription_count'] }]);
    assert.deepEqual(body, { occupied: true, subscription_count: 2 });
  });

  it('GET /channels/{name} without info answers just {"occupied": ...}', async () => {
    const name = uniqueName('plain');
    await subscriber(name);
    assert.deepEqual(await getJson(`/channels/${name}`), { occupied: true });
    const [body] = await pyOk(daemon, [{ op: 'channel_info', channel: uniqueName('plain-empty') }]);
    assert.deepEqual(body, { occupied: false });
  });

  it('an unoccupied channel reports occupied false (and a zero count if any) through both SDKs', async () => {
    const name = uniqueName('empty');
    const body = await getJson(`/channels/${name}`, { info: 'subscription_count' });
    assert.equal(body.occupied, false);
    if ('subscription_count' in body) assert.equal(body.subscription_count, 0);
    const [pyBody] = await pyOk(daemon, [{ op: 'channel_info', channel: name, attributes: ['subscription_count'] }]);
    assert.equal(pyBody.occupied, false);
    if ('subscription_count' in pyBody) assert.equal(pyBody.subscription_count, 0);
  });

  it('a channel whose last subscriber disconnects becomes unoccupied and leaves the /channels list', async () => {
    const prefix = uniqueName('leaving');
    const name = `${prefix}-ch`;
    const r = await subscriber(name);
    assert.deepEqual(await getJson(`/channels/${name}`), { occupied: true });
    r.ws.close(1000);
    await r.waitClose();
    await pollUntil(async () => (await getJson(`/channels/${name}`)).occupied === false, {
      what: `${name} unoccupied after its only subscriber closed`,
    });
    assert.deepEqual(await getJson('/channels', { filter_by_prefix: prefix }), { channels: {} });
  });

  it('Node SDK trigger with info=subscription_count answers the count of each named channel', async () => {
    const [a, b, empty] = [uniqueName('tinfo-a'), uniqueName('tinfo-b'), uniqueName('tinfo-empty')];
    await subscriber(a, b);
    await subscriber(a);
    const res = await node.trigger([a, b, empty], 'counted', { x: 1 }, { info: 'subscription_count' });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.ok(body.channels, JSON.stringify(body));
    assert.deepEqual(body.channels[a], { subscription_count: 2 });
    assert.deepEqual(body.channels[b], { subscription_count: 1 });
    if (empty in body.channels) assert.deepEqual(body.channels[empty], { subscription_count: 0 });
  });

  it('Node SDK triggerBatch with info answers one entry per event, in order', async () => {
    const [a, b] = [uniqueName('binfo-a'), uniqueName('binfo-b')];
    await subscriber(a);
    await subscriber(a, b);
    const res = await node.triggerBatch([
      { channel: a, name: 'one', data: {}, info: 'subscription_count' },
      { channel: b, name: 'two', data: {} },
      { channel: b, name: 'three', data: {}, info: 'subscription_count' },
    ]);
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.ok(Array.isArray(body.batch), JSON.stringify(body));
    assert.equal(body.batch.length, 3);
    assert.deepEqual(body.batch[0], { subscription_count: 2 });
    assert.deepEqual(body.batch[1], {});
    assert.deepEqual(body.batch[2], { subscription_count: 1 });
  });

  it('a trigger answers {} and the event reaches a raw subscriber with data as the exact string sent', async () => {
    const name = uniqueName('exact');
    const r = await subscriber(name);
    const sent = '{"spaced": [1, 2],  "unicode": "é ✓"}';
    const res = await node.trigger(name, 'exact', sent);
    assert.deepEqual(await res.json(), {});
    const msg = await r.waitEvent('exact', { channel: name });
    assert.deepEqual(msg.parsed, { event: 'exact', channel: name, data: sent });
  });

  it('a trigger naming its channel with the singular "channel" field is delivered', async () => {
    const name = uniqueName('singular');
    const r = await subscriber(name);
    const res = await signedRequest(daemon, {
      path: `/apps/${APP.id}/events`,
      body: { name: 'singular', data: '{"one":1}', channel: name },
    });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json, {});
    const msg = await r.waitEvent('singular', { channel: name });
    assert.deepEqual(msg.data, { one: 1 });
  });

  it('an unknown route under the app answers 404 with a JSON error', async () => {
    const err = await sdkError(node.get({ path: '/no-such-route' }));
    assert.equal(err.status, 404);
    assert.equal(typeof JSON.parse(err.body).error, 'string');
  });
});
