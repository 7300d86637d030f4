// Soketify benchmark load generator (Node + ws).
//
// One process = one worker, driven by bench/run.py over stdin/stdout: one JSON
// command per line in, one JSON reply per line out, strictly in order.  Every
// reply carries `now` (monotonic microseconds, CLOCK_MONOTONIC, the same clock
// in every process on the machine) and `cpu` (this process's user+system CPU
// microseconds so far), so the driver can tell whether the generator itself
// was the bottleneck.
//
// Commands:
//   {"cmd":"connect","url":U,"n":N,"concurrency":C,"subscribe":bool,"channel":"bench"}
//       open N WebSockets (at most C handshakes in flight); a connection is
//       "open" when its first frame (connection_established) arrives, and
//       with subscribe it is then subscribed and counted when
//       subscription_succeeded arrives.  Replies with `prefixes`: how many of
//       the connections it opened got a socket id starting with each prefix
//       (the part before the dot names the server process, e.g. the worker).
//   {"cmd":"expect","events":E}     reset delivery accounting for seq 0..E-1
//   {"cmd":"collect","idle_ms":T}   wait until every connection has every event,
//       or nothing arrived for T ms; report received/lost/dup/bad, first/last
//       receive time and a latency histogram
//   {"cmd":"close"}                 terminate every connection
//   {"cmd":"publish",...}           trigger E events over HTTP (see publish())
//   {"cmd":"rest",...}              REST trigger requests/s, latency, Content-Length of JSON
//                                   answers (see rest())
//   {"cmd":"join","url":U,"users":[ids],"concurrency":C,"channel":"presence-bench","key":K,"secret":S}
//       one connection per user id, each joining the presence channel (signed as an auth endpoint
//       would); replies with {joined: [[user, sent us, subscription_succeeded us], ...], failed,
//       frames_after_join: frames the joined members got since (member_added of later joins)}
//   {"cmd":"watch","url":U,"user":ID,"channel":...,"key":K,"secret":S}
//       one member that records when each member_added arrives
//   {"cmd":"watched"}              {seen: {user: receive time us}} of every watcher
//   {"cmd":"stats"}                 just now + cpu
//   {"cmd":"exit"}

import crypto from 'node:crypto';
import http from 'node:http';
import readline from 'node:readline';
import WebSocket from 'ws';
import Pusher from 'pusher';

const nowUs = () => Number(process.hrtime.bigint() / 1000n);
const cpuUs = () => { const c = process.cpuUsage(); return c.user + c.system; };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- histogram
// Log-linear, 64 sub-buckets per power of two (~1.6 % resolution), in us.
const SUB = 64;
const hist = new Float64Array(40 * SUB);
function record(v) {
  if (v < 0) v = 0;
  v = Math.floor(v);
  let idx;
  if (v < SUB) idx = v;
  else {
    const e = 31 - Math.clz32(v);
    idx = (e - 5) * SUB + ((v >>> (e - 6)) - SUB);
  }
  hist[idx]++;
}
function histPairs() {
  const out = [];
  for (let i = 0; i < hist.length; i++) if (hist[i]) out.push([i, hist[i]]);
  return out;
}

// ---------------------------------------------------------------- connections
const conns = [];          // {ws, seen: Uint8Array|null}
let expected = 0;          // events per connection
let received = 0, dup = 0, bad = 0, pings = 0;
let firstRecv = 0, lastRecv = 0;
const DELIVERY = /\\"s\\":(\d+),\\"t\\":(\d+)/;
const PONG = JSON.stringify({ event: 'pusher:pong', data: {} });

function onDelivery(c, buf) {
  const s = buf.toString();
  const m = DELIVERY.exec(s);
  const t = nowUs();
  if (m === null || !s.includes('"channel":"bench"')) {
    if (s.includes('"pusher:ping"')) { pings++; c.ws.send(PONG); return; }
    bad++;
    return;
  }
  const seq = +m[1];
  if (seq >= expected || c.seen === null) { bad++; return; }
  if (c.seen[seq]) { dup++; return; }
  c.seen[seq] = 1;
  received++;
  if (firstRecv === 0) firstRecv = t;
  lastRecv = t;
  record(t - +m[2]);
}

function openOne(url, subscribe, channel) {
  return new Promise((resolve) => {
    let ws;
    try {
      ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: 60000 });
    } catch (e) { resolve(null); return; }
    const c = { ws, seen: null, prefix: null };
    let state = 0; // 0 handshaking, 1 established (waiting for subscribed), 2 ready
    const fail = () => { if (state < 2) { state = 3; try { ws.terminate(); } catch (e) { /* */ } resolve(null); } };
    ws.on('error', fail);
    ws.on('close', fail);
    ws.on('message', (data) => {
      if (state === 2) { onDelivery(c, data); return; }
      const s = data.toString();
      if (state === 0) {
        if (!s.includes('pusher:connection_established')) { fail(); return; }
        try { c.prefix = JSON.parse(JSON.parse(s).data).socket_id.split('.')[0]; } catch (e) { /* */ }
        if (!subscribe) { state = 2; resolve(c); return; }
        state = 1;
        ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel, auth: '' } }));
      } else if (state === 1) {
        if (s.includes('pusher_internal:subscription_succeeded')) { state = 2; resolve(c); }
        else fail();
      }
    });
  });
}

async function connect({ url, n, concurrency = 32, subscribe = false, channel = 'bench' }) {
  const t0 = nowUs();
  let next = 0, opened = 0, failed = 0;
  const handshakeUs = [];
  const prefixes = {};
  async function lane() {
    while (next < n) {
      next++;
      const s = nowUs();
      const c = await openOne(url, subscribe, channel);
      if (c) {
        conns.push(c); opened++; handshakeUs.push(nowUs() - s);
        prefixes[c.prefix] = (prefixes[c.prefix] || 0) + 1;
      } else failed++;
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, n)) }, lane));
  const t1 = nowUs();
  handshakeUs.sort((a, b) => a - b);
  const q = (p) => (handshakeUs.length ? handshakeUs[Math.min(handshakeUs.length - 1, Math.floor(p * handshakeUs.length))] : null);
  return { opened, failed, t0, t1, open_p50_us: q(0.5), open_p99_us: q(0.99), open_max_us: q(1),
    prefixes };
}

function expect({ events }) {
  expected = events;
  received = 0; dup = 0; bad = 0; pings = 0; firstRecv = 0; lastRecv = 0;
  hist.fill(0);
  for (const c of conns) c.seen = new Uint8Array(events);
  return { connections: conns.length };
}

async function collect({ idle_ms = 5000 }) {
  const want = conns.length * expected;
  let lastCount = -1, lastChange = Date.now();
  while (received < want) {
    const count = received + dup + bad;
    if (count !== lastCount) { lastCount = count; lastChange = Date.now(); }
    else if (Date.now() - lastChange > idle_ms) break;
    await sleep(20);
  }
  let lost = 0;
  for (const c of conns) {
    if (!c.seen) { lost += expected; continue; }
    for (let i = 0; i < expected; i++) if (!c.seen[i]) lost++;
  }
  return { connections: conns.length, expected: want, received, lost, dup, bad, pings,
    first_recv: firstRecv, last_recv: lastRecv, hist: histPairs() };
}

// ---------------------------------------------------------------- presence
const members = [];        // WebSockets of joined presence members and watchers
let presenceFrames = 0;    // frames received by joined members after their subscription_succeeded
const joinErrors = [];     // a few reasons why joins failed
const watchers = [];       // {seen: Map(user -> receive time us)}

function joinPresence(url, channel, key, secret, user, onFrame) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: 60000 });
    let sent = 0, joined = false;
    // refused (subscription_error, e.g. a member limit), or no answer within 30 s: not joined
    const refuse = (why) => {
      if (joined) return;
      clearTimeout(timer);
      if (why && joinErrors.length < 3) joinErrors.push(why);
      try { ws.terminate(); } catch (e) { /* */ }
      resolve(null);
    };
    const timer = setTimeout(() => refuse(`${user}: no subscription_succeeded within 30 s`), 30000);
    ws.on('error', (e) => refuse(`${user}: ${e}`));
    ws.on('close', () => refuse(null));
    ws.on('message', (raw) => {
      // A joined member that watches nothing only counts what it gets (member_added of later
      // joins): parsing each of those frames would make the generator, not the server, the limit.
      if (joined && !onFrame) { presenceFrames++; return; }
      const frame = JSON.parse(raw.toString());
      if (frame.event === 'pusher:connection_established') {
        const socketId = JSON.parse(frame.data).socket_id;
        const channelData = JSON.stringify({ user_id: user });
        const signature = crypto.createHmac('sha256', secret)
          .update(`${socketId}:${channel}:${channelData}`).digest('hex');
        sent = nowUs();
        ws.send(JSON.stringify({ event: 'pusher:subscribe',
          data: { channel, auth: `${key}:${signature}`, channel_data: channelData } }));
      } else if (frame.event === 'pusher_internal:subscription_succeeded') {
        joined = true;
        clearTimeout(timer);
        members.push(ws);
        resolve([user, sent, nowUs()]);
      } else if (!joined && (frame.event === 'pusher:subscription_error' || frame.event === 'pusher:error')) {
        refuse(`${user}: ${raw.toString().slice(0, 200)}`);
      } else if (onFrame) {
        onFrame(frame);
      }
    });
  });
}

async function join({ url, users, concurrency = 16, channel = 'presence-bench', key, secret }) {
  const joined = [];
  let next = 0;
  async function lane() {
    while (next < users.length) {
      const r = await joinPresence(url, channel, key, secret, users[next++]);
      if (r) joined.push(r);
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, users.length) }, lane));
  return { joined, failed: users.length - joined.length, frames_after_join: presenceFrames,
    errors: joinErrors.splice(0) };
}

async function watch({ url, user, channel = 'presence-bench', key, secret }) {
  const seen = new Map();
  watchers.push({ seen });
  const r = await joinPresence(url, channel, key, secret, user, (frame) => {
    if (frame.event === 'pusher_internal:member_added') seen.set(JSON.parse(frame.data).user_id, nowUs());
  });
  return { joined: r !== null };
}

function watched() {
  return { seen: watchers.map((w) => Object.fromEntries(w.seen)) };
}

async function closeAll() {
  for (const ws of members) ws.terminate();
  members.length = 0;
  watchers.length = 0;
  presenceFrames = 0;
  const n = conns.length;
  const waits = conns.map((c) => new Promise((r) => {
    if (c.ws.readyState === WebSocket.CLOSED) { r(); return; }
    c.ws.once('close', r);
    c.ws.terminate();
  }));
  conns.length = 0;
  await Promise.race([Promise.all(waits), sleep(10000)]);
  return { closed: n };
}

// ---------------------------------------------------------------- HTTP triggers
// Signed with the official server SDK's own signer (PROTOCOL.md section 7); sent with
// our own keep-alive HTTP client so both servers see the same client.
const signers = new Map();
function signedPath(appId, key, secret, body) {
  const id = `${appId}\n${key}\n${secret}`;
  let pusher = signers.get(id);
  if (!pusher) {
    pusher = new Pusher({ appId, key, secret, host: '127.0.0.1' });
    signers.set(id, pusher);
  }
  const path = `/apps/${appId}/events`;
  return `${path}?${pusher.createSignedQueryString({ method: 'POST', path, body })}`;
}

function post(agent, port, path, body) {
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
    (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, text, headers: res.headers }));
    });
    req.on('error', (e) => resolve({ status: 0, text: String(e) }));
    req.end(body);
  });
}

// target: {"kind":"floor","port":P} -> POST /pub ;
//         {"kind":"pusher","port":P,"app_id","key","secret"} -> signed POST /apps/{id}/events
// With `reuse`, a body sent again within the same second reuses its signed path (the signature
// only changes with auth_timestamp, in seconds): the REST scenario sends one body over and over,
// and signing it each time would be load-generator work that is not the server's.
function makeTrigger(target, inflight, reuse = false) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: inflight });
  let memo = { body: null, second: -1, path: null };
  return (body) => {
    let path;
    if (target.kind === 'floor') path = '/pub';
    else if (reuse) {
      const second = Math.floor(Date.now() / 1000);
      if (memo.body !== body || memo.second !== second) {
        memo = { body, second, path: signedPath(target.app_id, target.key, target.secret, body) };
      }
      path = memo.path;
    } else path = signedPath(target.app_id, target.key, target.secret, body);
    return post(agent, target.port, path, body);
  };
}

// Publish `events` events to `channel`, at most `inflight` requests at a time;
// with rate > 0, event i is not sent before start + i / rate seconds.
// data = {"s":seq,"t":<send time, us>,"p":"xxx..."} padded to `size` bytes.
async function publish({ target, events, inflight = 2, rate = 0, size = 128, channel = 'bench', name = 'e' }) {
  const trigger = makeTrigger(target, inflight);
  let next = 0, accepted = 0, errors = 0;
  const errorSamples = [];
  const t0 = nowUs();
  async function lane() {
    while (next < events) {
      const seq = next++;
      if (rate > 0) {
        const due = t0 + (seq * 1e6) / rate;
        const wait = due - nowUs();
        if (wait > 1000) await sleep(wait / 1000);
      }
      let data = `{"s":${seq},"t":${nowUs()},"p":"`;
      data += 'x'.repeat(Math.max(0, size - data.length - 2)) + '"}';
      const body = JSON.stringify({ name, channels: [channel], data });
      const r = await trigger(body);
      if (r.status === 200) accepted++;
      else { errors++; if (errorSamples.length < 3) errorSamples.push(`${r.status} ${r.text.slice(0, 200)}`); }
    }
  }
  await Promise.all(Array.from({ length: inflight }, lane));
  return { accepted, errors, error_samples: errorSamples, t0, t1: nowUs() };
}

// REST trigger throughput: `requests` signed POSTs with `concurrency` keep-alive
// connections, to a channel nobody subscribes to.
async function rest({ target, requests, concurrency = 16, size = 128, channel = 'rest-bench', name = 'e' }) {
  const trigger = makeTrigger(target, concurrency, true);
  const data = JSON.stringify({ p: 'x'.repeat(Math.max(0, size - 8)) });
  const body = JSON.stringify({ name, channels: [channel], data });
  let next = 0, accepted = 0, errors = 0;
  // JSON answers (content-type says json, or the body parses as JSON), and how many of them
  // carried a Content-Length header (the others went out chunked or close-delimited)
  let jsonAnswers = 0, jsonWithLength = 0, chunked = 0;
  let headerSample = null;
  const errorSamples = [];
  const lat = [];
  const t0 = nowUs();
  async function lane() {
    while (next < requests) {
      next++;
      const s = nowUs();
      const r = await trigger(body);
      lat.push(nowUs() - s);
      if (r.status === 200) accepted++;
      else { errors++; if (errorSamples.length < 3) errorSamples.push(`${r.status} ${r.text.slice(0, 200)}`); }
      const h = r.headers || {};
      let isJson = (h['content-type'] || '').includes('json');
      if (!isJson) { try { JSON.parse(r.text); isJson = r.text.length > 0; } catch (e) { /* not JSON */ } }
      if (isJson) {
        jsonAnswers++;
        if (h['content-length'] !== undefined) jsonWithLength++;
        if (headerSample === null) headerSample = h;
      }
      if ((h['transfer-encoding'] || '').includes('chunked')) chunked++;
    }
  }
  await Promise.all(Array.from({ length: concurrency }, lane));
  const t1 = nowUs();
  lat.sort((a, b) => a - b);
  return { accepted, errors, error_samples: errorSamples, t0, t1,
    json_answers: jsonAnswers, json_with_length: jsonWithLength, chunked, header_sample: headerSample,
    p50_us: lat[Math.floor(lat.length * 0.5)], p99_us: lat[Math.floor(lat.length * 0.99)] };
}

// ---------------------------------------------------------------- command loop
const handlers = {
  connect, expect, collect, publish, rest, join, watch, watched,
  close: closeAll,
  stats: () => ({}),
  exit: () => { setImmediate(() => process.exit(0)); return {}; },
};

const rl = readline.createInterface({ input: process.stdin });
let chain = Promise.resolve();
rl.on('line', (line) => {
  if (!line.trim()) return;
  chain = chain.then(async () => {
    let reply;
    try {
      const msg = JSON.parse(line);
      const h = handlers[msg.cmd];
      if (!h) throw new Error(`unknown command ${msg.cmd}`);
      reply = { ok: true, ...(await h(msg)) };
    } catch (e) {
      reply = { ok: false, error: String(e && e.stack || e) };
    }
    reply.now = nowUs();
    reply.cpu = cpuUs();
    process.stdout.write(JSON.stringify(reply) + '\n');
  });
});
rl.on('close', () => { chain.then(() => process.exit(0)); });
