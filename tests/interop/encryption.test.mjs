// End-to-end encrypted channels (private-encrypted-): the Node SDK (encryptionMasterKeyBase64) and
// the Python SDK (encryption_master_key_base64) encrypt, the server relays the ciphertext untouched,
// pusher-js 8 (its Node build bundles tweetnacl) decrypts with the shared_secret its auth handler got
// from the Node SDK's authorizeChannel. PROTOCOL.md section 4 ("Encrypted channels") and 5.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { createRequire } from 'node:module';

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
  subscribePusherJs,
  uniqueName,
  watchPusherJs,
} from './helpers.mjs';

const require = createRequire(import.meta.url);
const nacl = require('tweetnacl'); // dependency of the Node server SDK

const MASTER_KEY_B64 = crypto.randomBytes(32).toString('base64');

function sharedSecret(channel, masterKeyB64 = MASTER_KEY_B64) {
  return crypto.createHash('sha256')
    .update(Buffer.concat([Buffer.from(channel, 'utf8'), Buffer.from(masterKeyB64, 'base64')]))
    .digest();
}

describe('private-encrypted- channels end to end', () => {
  let daemon;
  let node; // Node SDK with the master key
  const clients = [];
  const raws = [];

  async function client(options = {}) {
    const c = await connectPusherJs(daemon, options);
    clients.push(c);
    return c;
  }

  async function raw() {
    const r = await RawClient.connect(daemon);
    raws.push(r);
    return r;
  }

  async function rawSubscribe(r, name) {
    const { auth } = node.authorizeChannel(r.socketId, name);
    r.send({ event: 'pusher:subscribe', data: { channel: name, auth } });
    return r.waitEvent('pusher_internal:subscription_succeeded', { channel: name });
  }

  before(async () => {
    daemon = await Daemon.start({ apps: [appConfig()] });
    node = daemon.sdk(APP, { encryptionMasterKeyBase64: MASTER_KEY_B64 });
  });

  after(async () => {
    for (const c of clients) disconnectPusherJs(c);
    for (const r of raws) r.terminate();
    if (daemon) await daemon.stop();
  });

  it('the Node SDK auth gives the shared_secret of PROTOCOL.md test vector (rig sanity check)', () => {
    const sdk = daemon.sdk(APP, { encryptionMasterKeyBase64: 'zyrm8pvV2C9fJcBfhyXzvxbJVN/H7QLmbe0xJi1GhPU=' });
    const auth = sdk.authorizeChannel('1.1', 'private-encrypted-bla');
    assert.equal(auth.shared_secret, 'nlr49ISQHz91yS3cy/yWmW8wFMNeTnNL5tNHnbPJcLQ=');
  });

  it('a Node SDK event reaches pusher-js decrypted while the wire carries only {nonce, ciphertext}', async () => {
    const name = uniqueName('private-encrypted-medical');
    const c = await client(sdkAuthOptions(node));
    const { inbox } = await subscribePusherJs(c, name);
    const r = await raw();
    await rawSubscribe(r, name);

    const plaintext = { patientId: 'P-9876', status: 'discharged', notes: 'sensitive é ✓' };
    const res = await node.trigger(name, 'patient-update', plaintext);
    assert.equal(res.status, 200);

    const got = await inbox.waitFor((e) => e.event === 'patient-update', { what: 'decrypted patient-update' });
    assert.deepEqual(got.data, plaintext);

    const wire = await r.waitEvent('patient-update', { channel: name });
    assert.equal(typeof wire.parsed.data, 'string');
    assert.deepEqual(Object.keys(wire.data).sort(), ['ciphertext', 'nonce']);
    assert.ok(!wire.raw.includes('P-9876'), wire.raw);
  });

  it('a Python SDK event (encryption_master_key_base64) reaches pusher-js decrypted', async () => {
    const name = uniqueName('private-encrypted-account');
    const c = await client(sdkAuthOptions(node));
    const { inbox } = await subscribePusherJs(c, name);
    const plaintext = { account: 'ACC-001', balance: 1234.5, tags: ['a', 'b'] };
    await pyOk(daemon, [{ op: 'trigger', channels: [name], event: 'py-balance', data: plaintext }], APP, {
      encryptionMasterKeyBase64: MASTER_KEY_B64,
    });
    const got = await inbox.waitFor((e) => e.event === 'py-balance', { what: 'decrypted py-balance' });
    assert.deepEqual(got.data, plaintext);
  });

  it('the server relays the encrypted data string byte for byte', async () => {
    const name = uniqueName('private-encrypted-exact');
    const c = await client(sdkAuthOptions(node));
    const { inbox } = await subscribePusherJs(c, name);
    const r = await raw();
    await rawSubscribe(r, name);

    const nonce = crypto.randomBytes(24);
    const box = nacl.secretbox(Buffer.from(JSON.stringify({ hand: 'made' }), 'utf8'), nonce, sharedSecret(name));
    // Unusual but valid JSON spacing and key order: must not be re-serialized.
    const data = `{ "ciphertext" : "${Buffer.from(box).toString('base64')}",  "nonce":"${nonce.toString('base64')}" }`;
    const res = await node.post({ path: '/events', body: { name: 'handmade', channels: [name], data } });
    assert.equal(res.status, 200);

    const wire = await r.waitEvent('handmade', { channel: name });
    assert.equal(wire.parsed.data, data);
    const got = await inbox.waitFor((e) => e.event === 'handmade', { what: 'decrypted handmade' });
    assert.deepEqual(got.data, { hand: 'made' });
  });

  it('a client event on an encrypted channel is refused with pusher:error 4301 and not relayed', async () => {
    const name = uniqueName('private-encrypted-chat');
    const c = await client(sdkAuthOptions(node));
    const { channel, inbox } = await subscribePusherJs(c, name);
    // pusher-js itself refuses to send one...
    assert.throws(() => channel.trigger('client-x', {}), /not currently supported for encrypted channels/);

    // ...so send it raw, as a modified client could.
    const r = await raw();
    await rawSubscribe(r, name);
    r.send({ event: 'client-sneaky', channel: name, data: { nonce: 'AAAA', ciphertext: 'BBBB' } });
    const err = await r.waitEvent('pusher:error');
    assert.equal(err.data.code, 4301);
    assert.equal(typeof err.data.message, 'string');
    await r.sync();
    assert.equal(r.close, null);

    await node.trigger(name, 'barrier', { n: 1 });
    await inbox.waitFor((e) => e.event === 'barrier', { what: 'barrier' });
    assert.equal(inbox.filter((e) => e.event === 'client-sneaky').length, 0);
  });

  it('a REST trigger naming an encrypted channel and another channel is a 400 and delivers nothing', async () => {
    const enc = uniqueName('private-encrypted-multi');
    const other = uniqueName('plain-multi');
    const c = await client(sdkAuthOptions(node));
    const { inbox: inEnc } = await subscribePusherJs(c, enc);
    const { inbox: inOther } = await subscribePusherJs(c, other);

    // The Node SDK's trigger() refuses before sending...
    assert.throws(() => node.trigger([enc, other], 'both', { x: 1 }), /multiple channels/);
    // ...so send the same request through the SDK's signed generic post.
    let status;
    try {
      const res = await node.post({ path: '/events', body: { name: 'both', data: '{"x":1}', channels: [other, enc] } });
      status = res.status;
    } catch (err) {
      assert.equal(err.name, 'PusherRequestError', String(err));
      status = err.status;
      assert.equal(typeof JSON.parse(err.body).error, 'string');
    }
    assert.equal(status, 400);

    await node.trigger(other, 'barrier', {});
    await node.trigger(enc, 'barrier', {});
    await inOther.waitFor((e) => e.event === 'barrier', { what: 'barrier on the plain channel' });
    await inEnc.waitFor((e) => e.event === 'barrier', { what: 'barrier on the encrypted channel' });
    assert.equal(inOther.filter((e) => e.event === 'both').length, 0);
    assert.equal(inEnc.filter((e) => e.event === 'both').length, 0);
  });

  it('pusher-js with an auth handler that omits shared_secret never subscribes (client-side AuthError)', async () => {
    const name = uniqueName('private-encrypted-nokey');
    const plain = daemon.sdk(APP); // no master key: refuses to sign encrypted channels
    const c = await client(sdkAuthOptions(plain));
    const watch = watchPusherJs(c);
    const channel = c.subscribe(name);
    const outcomes = new Inbox('subscription outcome');
    channel.bind('pusher:subscription_error', (e) => outcomes.push(e));
    const err = await outcomes.waitFor(() => true, { what: 'pusher:subscription_error' });
    assert.equal(err.type, 'AuthError');
    assert.equal(channel.subscribed, false);
    assert.equal(watch.errors.items.filter((e) => pusherJsErrorCode(e) !== undefined).length, 0);
  });
});
