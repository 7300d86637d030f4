// A subscriber that stops reading (issue 10): the daemon disconnects it once its unsent data passes
// [server] max_send_buffer, its memory grows by about that much at most, and the other subscribers
// get every event without delay.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';

import { APP, Daemon, RawClient, pollUntil, signedRequest } from './helpers.mjs';

const MAX_SEND_BUFFER = 1024 * 1024;
const EVENTS = 2000;
const BATCH = 10;

function rssKb(pid) {
  return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
}

/** A masked client text frame (RFC 6455) carrying `text`. */
function clientFrame(text) {
  const payload = Buffer.from(text);
  const mask = crypto.randomBytes(4);
  const head = payload.length < 126
    ? Buffer.from([0x81, 0x80 | payload.length])
    : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff]);
  return Buffer.concat([head, mask, payload.map((byte, i) => byte ^ mask[i % 4])]);
}

/** A raw socket that upgrades, subscribes to `channel`, then never reads another byte. */
async function neverReading(daemon, channel) {
  const socket = net.connect(daemon.port, '127.0.0.1');
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write(`GET /app/${APP.key}?protocol=7 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n`
    + `Connection: Upgrade\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\n`
    + 'Sec-WebSocket-Version: 13\r\n\r\n');
  await new Promise((resolve) => {
    let seen = '';
    const onData = (chunk) => {
      seen += chunk.toString('latin1');
      if (seen.includes('connection_established')) {
        socket.off('data', onData);
        socket.pause(); // from here on nothing is read: the kernel's buffers fill, then the daemon's
        resolve();
      }
    };
    socket.on('data', onData);
  });
  socket.write(clientFrame(JSON.stringify({ event: 'pusher:subscribe', data: { channel } })));
  return socket;
}

describe('a subscriber that stops reading', () => {
  let daemon;
  const clients = [];
  const sockets = [];

  before(async () => {
    daemon = await Daemon.start({ server: { max_send_buffer: MAX_SEND_BUFFER } });
  });

  after(async () => {
    for (const client of clients) client.terminate();
    for (const socket of sockets) socket.destroy();
    if (daemon) await daemon.stop();
  });

  it('is dropped past max_send_buffer; memory stays bounded; the others lose nothing', async () => {
    const channel = 'slow-reader';
    const good = await RawClient.connect(daemon, { label: 'good reader' });
    clients.push(good);
    const arrivedAt = [];
    good.ws.on('message', () => arrivedAt.push(Date.now()));
    await good.subscribe(channel);
    const slow = await neverReading(daemon, channel);
    sockets.push(slow);
    const count = async () => (await signedRequest(daemon, {
      method: 'GET', path: `/apps/${APP.id}/channels/${channel}`, query: { info: 'subscription_count' },
    })).json.subscription_count;
    await pollUntil(async () => (await count()) === 2, { what: 'the slow reader to subscribe' });

    const rssBefore = rssKb(daemon.proc.pid);
    let rssPeak = rssBefore;
    const sentAt = new Map();
    const data = 'x'.repeat(10 * 1024 - 16);
    for (let first = 0; first < EVENTS; first += BATCH) {
      const batch = [];
      for (let n = first; n < first + BATCH; n += 1) batch.push({ name: 'e', channel, data: `${n}:${data}` });
      sentAt.set(first, Date.now());
      const answer = await signedRequest(daemon, { path: `/apps/${APP.id}/batch_events`, body: { batch } });
      assert.equal(answer.status, 200);
      rssPeak = Math.max(rssPeak, rssKb(daemon.proc.pid));
    }
    const received = () => good.messages.filter((m) => m.event === 'e');
    await pollUntil(() => received().length >= EVENTS, { timeout: 30000, what: `${EVENTS} events` });
    const arrivals = good.messages.filter((m) => m.event === 'e');
    const numbers = arrivals.map((m) => Number(m.parsed.data.split(':')[0]));
    assert.deepEqual(numbers, [...Array(EVENTS).keys()], 'the good reader got every event, in order');

    // The daemon has let the slow reader go: one subscriber left on the channel.
    await pollUntil(async () => (await count()) === 1, { timeout: 10000, what: 'the slow reader to be dropped' });

    // Latency of the good reader: from the POST of each batch to the arrival of its events.
    const delays = numbers.map((n, i) => arrivedAt[arrivedAt.length - EVENTS + i]
      - sentAt.get(n - (n % BATCH))).sort((x, y) => x - y);
    const p50 = delays[Math.floor(delays.length / 2)];
    const p99 = delays[Math.floor(delays.length * 0.99)];
    console.log(`slow reader: the good reader's latency p50 ${p50} ms, p99 ${p99} ms, max `
      + `${delays[delays.length - 1]} ms`);
    assert.ok(p99 < 1000, `p99 ${p99} ms`);
    const growthKb = rssPeak - rssBefore;
    console.log(`slow reader: RSS ${rssBefore} KB before, peak ${rssPeak} KB (+${growthKb} KB) while `
      + `${EVENTS} events of 10 KB (${(EVENTS * 10) / 1024} MB per subscriber) were published; `
      + `max_send_buffer ${MAX_SEND_BUFFER / 1024} KB`);
    // Buffering everything for the slow reader would take 20 MB; what is held for it is bounded by
    // max_send_buffer, the rest is the allocator's working set for 20 MB passing through.
    assert.ok(growthKb < 12 * 1024, `RSS grew by ${growthKb} KB`);
  });
});
