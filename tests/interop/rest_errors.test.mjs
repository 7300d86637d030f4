// REST API refusals: status codes and JSON error bodies (PROTOCOL.md section 7), through the
// Node and Python SDKs where they can build the request, else through a hand-signed request.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { APP, Daemon, appConfig, pyOk, sdkError, signedRequest, uniqueName } from './helpers.mjs';

function assertJsonError(text, status) {
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    assert.fail(`error body for ${status} is not JSON: ${JSON.stringify(text)}`);
  }
  assert.equal(typeof body, 'object');
  assert.equal(typeof body.error, 'string', `error body ${text} has no "error" string`);
  assert.ok(body.error.length > 0);
}

describe('REST API errors', () => {
  let daemon;
  let node;

  before(async () => {
    daemon = await Daemon.start({ apps: [appConfig()] });
    node = daemon.sdk();
  });

  after(async () => {
    if (daemon) await daemon.stop();
  });

  async function expectSdkStatus(promise, status) {
    const err = await sdkError(promise);
    assert.equal(err.status, status, `expected ${status}, got ${err.status}: ${err.body}`);
    assertJsonError(err.body, status);
    return err;
  }

  async function expectSignedStatus(request, status) {
    const res = await signedRequest(daemon, request);
    assert.equal(res.status, status, `expected ${status}, got ${res.status}: ${res.text}`);
    assertJsonError(res.text, status);
    return res;
  }

  async function pyError(op, app = APP) {
    const [result] = await daemon.py([op], app);
    assert.equal(result.ok, false, `expected the Python SDK call to fail, got ${JSON.stringify(result)}`);
    return result;
  }

  it('the hand-signed request helper is accepted for a valid trigger (control)', async () => {
    const res = await signedRequest(daemon, {
      path: `/apps/${APP.id}/events`,
      body: { name: 'ok', data: '{}', channels: [uniqueName('control')] },
    });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json, {});
  });

  it('a trigger signed with the wrong secret answers 401 with a JSON error (Node SDK)', async () => {
    const bad = daemon.sdk({ ...APP, secret: 'not-the-secret' });
    await expectSdkStatus(bad.trigger(uniqueName('badsig'), 'e', {}), 401);
  });

  it('a query signed with the wrong secret answers 401 (Node SDK GET /channels)', async () => {
    const bad = daemon.sdk({ ...APP, secret: 'not-the-secret' });
    await expectSdkStatus(bad.get({ path: '/channels' }), 401);
  });

  it('a trigger signed with the wrong secret raises PusherBadAuth in the Python SDK', async () => {
    const result = await pyError({ op: 'trigger', channels: [uniqueName('pybadsig')], event: 'e', data: {} }, {
      ...APP,
      secret: 'not-the-secret',
    });
    assert.equal(result.error, 'PusherBadAuth', JSON.stringify(result));
    assertJsonError(result.message, 401);
  });

  it('an auth_timestamp more than 600 s old answers 401', async () => {
    await expectSignedStatus(
      {
        path: `/apps/${APP.id}/events`,
        body: { name: 'e', data: '{}', channels: [uniqueName('stale')] },
        timestamp: Math.floor(Date.now() / 1000) - 700,
      },
      401,
    );
  });

  it('a request without auth_signature or with a garbage one answers 401', async () => {
    await expectSignedStatus(
      { path: `/apps/${APP.id}/events`, body: { name: 'e', data: '{}', channels: ['x'] }, signatureOverride: 'f'.repeat(64) },
      401,
    );
    const res = await fetch(`${daemon.baseUrl}/apps/${APP.id}/channels`);
    assert.equal(res.status, 401);
    assertJsonError(await res.text(), 401);
  });

  it('an unknown app id answers 404 with a JSON error (Node SDK)', async () => {
    const ghost = daemon.sdk({ id: '999999', key: APP.key, secret: APP.secret });
    await expectSdkStatus(ghost.trigger(uniqueName('ghost'), 'e', {}), 404);
  });

  it('an unknown app id answers 404 to the Python SDK', async () => {
    const result = await pyError({ op: 'channels_info' }, { id: '999999', key: APP.key, secret: APP.secret });
    assert.equal(result.status, 404, JSON.stringify(result));
  });

  it('event data of exactly 10240 bytes is accepted', async () => {
    const res = await node.trigger(uniqueName('max-data'), 'e', 'x'.repeat(10240));
    assert.equal(res.status, 200);
  });

  it('event data over 10 KB answers 413 with a JSON error (Node SDK)', async () => {
    await expectSdkStatus(node.trigger(uniqueName('big-data'), 'e', 'x'.repeat(10241)), 413);
  });

  it('event data over 10 KB answers 413 to the Python SDK', async () => {
    const result = await pyError({ op: 'trigger', channels: [uniqueName('pybig')], event: 'e', data: 'y'.repeat(12000) });
    assert.equal(result.status, 413, JSON.stringify(result));
  });

  it('a batch event with data over 10 KB answers 413', async () => {
    await expectSdkStatus(
      node.triggerBatch([
        { channel: uniqueName('batch-ok'), name: 'e', data: 'small' },
        { channel: uniqueName('batch-big'), name: 'e', data: 'z'.repeat(10241) },
      ]),
      413,
    );
  });

  it('a trigger to exactly 100 channels is accepted', async () => {
    const channels = Array.from({ length: 100 }, (_, i) => `hundred-${i}`);
    const res = await node.trigger(channels, 'e', {});
    assert.equal(res.status, 200);
  });

  it('a trigger to more than 100 channels answers 400 with a JSON error', async () => {
    const channels = Array.from({ length: 101 }, (_, i) => `too-many-${i}`);
    await expectSignedStatus({ path: `/apps/${APP.id}/events`, body: { name: 'e', data: '{}', channels } }, 400);
  });

  it('a batch of 10 events is accepted', async () => {
    const batch = Array.from({ length: 10 }, (_, i) => ({ channel: `batch10-${i}`, name: 'e', data: {} }));
    const res = await node.triggerBatch(batch);
    assert.equal(res.status, 200);
  });

  it('a batch of more than 10 events answers 400 with a JSON error (Node SDK)', async () => {
    const batch = Array.from({ length: 11 }, (_, i) => ({ channel: `batch11-${i}`, name: 'e', data: {} }));
    await expectSdkStatus(node.triggerBatch(batch), 400);
  });

  it('a batch of more than 10 events raises PusherBadRequest in the Python SDK', async () => {
    const batch = Array.from({ length: 11 }, (_, i) => ({ channel: `pybatch11-${i}`, name: 'e', data: {} }));
    const result = await pyError({ op: 'trigger_batch', batch });
    assert.equal(result.error, 'PusherBadRequest', JSON.stringify(result));
    assertJsonError(result.message, 400);
  });

  it('a trigger naming an invalid channel answers 400 with a JSON error', async () => {
    for (const channel of ['bad channel', 'bad/slash', 'ünïcode', '', 'c'.repeat(201)]) {
      await expectSignedStatus(
        { path: `/apps/${APP.id}/events`, body: { name: 'e', data: '{}', channels: ['good-one', channel] } },
        400,
      );
    }
  });

  it('a trigger with a channel name of exactly 200 allowed characters is accepted', async () => {
    const res = await node.trigger('A-z_0=9@,.;'.repeat(19).slice(0, 200).padEnd(200, 'q'), 'e', {});
    assert.equal(res.status, 200);
  });

  it('a batch event naming an invalid channel answers 400', async () => {
    await expectSignedStatus(
      { path: `/apps/${APP.id}/batch_events`, body: { batch: [{ channel: 'bad channel', name: 'e', data: '{}' }] } },
      400,
    );
  });

  it('GET /channels/{name} for an invalid channel name answers 400', async () => {
    await expectSignedStatus({ method: 'GET', path: `/apps/${APP.id}/channels/bad%20name` }, 400);
  });

  it('an event name over 200 characters answers 400', async () => {
    await expectSignedStatus(
      { path: `/apps/${APP.id}/events`, body: { name: 'n'.repeat(201), data: '{}', channels: ['long-name'] } },
      400,
    );
  });

  it('a trigger without an event name or without channels answers 400', async () => {
    await expectSignedStatus({ path: `/apps/${APP.id}/events`, body: { data: '{}', channels: ['no-name'] } }, 400);
    await expectSignedStatus({ path: `/apps/${APP.id}/events`, body: { name: 'e', data: '{}' } }, 400);
  });

  it('a body that is not JSON answers 400', async () => {
    await expectSignedStatus({ path: `/apps/${APP.id}/events`, body: '{"name": "e", "data": ' }, 400);
  });

  it('a body that does not match its signed body_md5 is refused with 401 or 400', async () => {
    // Sign one body, send another: the signature covers body_md5, which no longer matches.
    const signedFor = JSON.stringify({ name: 'e', data: '{}', channels: ['md5'] });
    const crypto = await import('node:crypto');
    const md5 = crypto.createHash('md5').update(signedFor).digest('hex');
    const ts = Math.floor(Date.now() / 1000);
    const path = `/apps/${APP.id}/events`;
    const query = `auth_key=${APP.key}&auth_timestamp=${ts}&auth_version=1.0&body_md5=${md5}`;
    const sig = crypto.createHmac('sha256', APP.secret).update(`POST\n${path}\n${query}`).digest('hex');
    const res = await fetch(`${daemon.baseUrl}${path}?${query}&auth_signature=${sig}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'e', data: '{"tampered":true}', channels: ['md5'] }),
    });
    const text = await res.text();
    assert.ok([400, 401].includes(res.status), `expected 401 (or 400), got ${res.status}: ${text}`);
    assertJsonError(text, res.status);
  });
});
