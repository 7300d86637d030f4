// Shared helpers for the interop suite: start/stop the real soketify daemon,
// connect official clients (pusher-js, the Node and Python server SDKs) and
// raw `ws` clients, and wait on events with bounded timeouts.
//
// Environment:
//   SOKETIFY_VENV    virtualenv holding the daemon (default: <repo>/.venv)
//   SOKETIFY_PYTHON  python used for py_sdk.py (default: <venv>/bin/python)
//   SOKETIFY_INTEROP_LOGS=1  echo daemon output to stderr while tests run

import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
export const PusherJS = require('pusher-js');
export const PusherServer = require('pusher');
export const WebSocket = require('ws');

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(HERE, '..', '..');
export const VENV = process.env.SOKETIFY_VENV || path.join(REPO_ROOT, '.venv');
export const PYTHON = process.env.SOKETIFY_PYTHON || path.join(VENV, 'bin', 'python');
export const TWISTD = path.join(VENV, 'bin', 'twistd');

export const DEFAULT_TIMEOUT = 5000;

// App ids are numeric: the Python SDK (pusher 3.3) refuses any other app id.
export const APP = Object.freeze({ id: '100001', key: 'app-key', secret: 'app-secret' });

// ---------------------------------------------------------------- waiting

export function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Race `promise` against a timer; the error names what we were waiting for. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Poll an async (or sync) check until it returns a truthy value; returns that value.
 * Used only for server state that has no push notification (REST queries).
 */
export async function pollUntil(check, { timeout = DEFAULT_TIMEOUT, interval = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}; last result: ${describe(last)}`);
    }
    await delay(interval);
  }
}

function describe(value) {
  if (value instanceof Error) return `${value.name}: ${value.message}`;
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

/**
 * An append-only log of received items with waiters: `waitFor(pred)` resolves with the
 * first item (already received or future) matching `pred`, or rejects after the timeout.
 */
export class Inbox {
  constructor(label) {
    this.label = label;
    this.items = [];
    this.waiters = new Set();
  }

  push(item) {
    this.items.push(item);
    for (const waiter of [...this.waiters]) {
      if (waiter.pred(item)) {
        this.waiters.delete(waiter);
        clearTimeout(waiter.timer);
        waiter.resolve(item);
      }
    }
  }

  /** Reject every pending waiter (the source is gone). */
  fail(err) {
    this.failure = err;
    for (const waiter of [...this.waiters]) {
      this.waiters.delete(waiter);
      clearTimeout(waiter.timer);
      waiter.reject(err);
    }
  }

  filter(pred) {
    return this.items.filter(pred);
  }

  waitFor(pred, { timeout = DEFAULT_TIMEOUT, what = 'a matching item', from = 0 } = {}) {
    const found = this.items.slice(from).find(pred);
    if (found !== undefined) return Promise.resolve(found);
    if (this.failure) return Promise.reject(new Error(`${this.failure.message} (waiting for ${what})`));
    return new Promise((resolve, reject) => {
      const waiter = { pred, resolve, reject };
      waiter.timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(
          new Error(
            `${this.label}: timed out after ${timeout} ms waiting for ${what}; received so far: ` +
              describe(this.items).slice(0, 2000),
          ),
        );
      }, timeout);
      this.waiters.add(waiter);
    });
  }
}

// ---------------------------------------------------------------- daemon

/** A TCP port that was free a moment ago (bind port 0, read it, close). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function tomlValue(value) {
  if (typeof value === 'string') return JSON.stringify(value); // TOML basic string, JSON escapes are valid
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new Error(`cannot write ${value} to TOML`);
    return String(value);
  }
  if (Array.isArray(value)) return `[${value.map(tomlValue).join(', ')}]`;
  if (value && typeof value === 'object') {
    // An inline table (e.g. a webhook filter); keys quoted so they are written verbatim.
    return `{ ${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)} = ${tomlValue(v)}`).join(', ')} }`;
  }
  throw new Error(`cannot write ${typeof value} to TOML`);
}

function tomlTable(header, obj) {
  const lines = [header];
  for (const [k, v] of Object.entries(obj)) {
    if (v === undefined) continue;
    lines.push(`${k} = ${tomlValue(v)}`);
  }
  return lines.join('\n');
}

export function appConfig(overrides = {}) {
  return {
    id: APP.id,
    key: APP.key,
    secret: APP.secret,
    enabled: true,
    max_connections: 0,
    client_events: true,
    authorized_connections: false,
    subscription_count: false,
    ...overrides,
  };
}

/**
 * The daemon's TOML. Optional tables: [limits] (`limits`), [webhooks] (`webhooks`, e.g. {grace: 1}),
 * [cluster] (`cluster`, e.g. {engine: 'redis', redis_url, prefix, node_timeout}); `stateDir` is
 * [server] state_dir. An app may carry `webhooks: [{url, event_types?, filter?}]`, written as its
 * [[apps.webhooks]] tables.
 */
export function renderConfig({
  port, server = {}, apps = [appConfig()], tls = null, limits = null, webhooks = null, cluster = null, stateDir = null,
  console = null,
}) {
  const listen = [`tcp:${port}:interface=127.0.0.1`];
  if (tls) {
    listen.push(`ssl:${tls.port}:interface=127.0.0.1:privateKey=${tls.key}:certKey=${tls.cert}`);
  }
  const serverTable = {
    listen,
    activity_timeout: 120,
    max_message_size: 65536,
    ...(stateDir ? { state_dir: stateDir } : {}),
    ...server,
  };
  const parts = [tomlTable('[server]', serverTable)];
  if (limits) parts.push(tomlTable('[limits]', limits));
  if (webhooks) parts.push(tomlTable('[webhooks]', webhooks));
  if (cluster) parts.push(tomlTable('[cluster]', cluster));
  if (console) parts.push(tomlTable('[console]', console));
  for (const { webhooks: targets = [], ...app } of apps) {
    parts.push(tomlTable('[[apps]]', app));
    for (const target of targets) parts.push(tomlTable('[[apps.webhooks]]', target));
  }
  return parts.join('\n\n') + '\n';
}

/**
 * The pids of the live child processes of `pid` (Linux: read from /proc/<n>/stat), ascending; a
 * `[server] workers = N` daemon's children are its worker processes. Zombies are left out.
 */
export function childPids(pid) {
  const children = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat;
    try {
      stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // ended meanwhile
    }
    // "<pid> (<comm>) <state> <ppid> ...": comm may hold spaces and parentheses.
    const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(ppid) === pid && state !== 'Z') children.push(Number(entry));
  }
  return children.sort((a, b) => a - b);
}

// A detached daemon leads its own process group, so a Ctrl-C in the terminal (SIGINT to the
// foreground group) does not reach it. Kill the ones still running when this process exits or is
// interrupted, so none outlives the test run.
const detachedDaemons = new Set();
let exitHooksInstalled = false;

function killDetachedDaemons() {
  for (const daemon of detachedDaemons) {
    try {
      process.kill(-daemon.proc.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  detachedDaemons.clear();
}

function trackDetached(daemon) {
  detachedDaemons.add(daemon);
  daemon.proc.on('exit', () => detachedDaemons.delete(daemon));
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  process.on('exit', killDetachedDaemons);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.once(signal, () => {
      killDetachedDaemons();
      process.kill(process.pid, signal); // the default action, now that no handler is left
    });
  }
}

/**
 * A running soketify daemon (twistd -n soketify --config file) on a free port.
 * Use `Daemon.start({apps, server})`; always `await daemon.stop()` in an after() hook.
 */
export class Daemon {
  static async start(options = {}) {
    const daemon = new this(options);
    try {
      await daemon._start();
    } catch (err) {
      await daemon.stop().catch(() => {});
      err.message += `\n--- daemon output ---\n${daemon.output()}`;
      throw err;
    }
    return daemon;
  }

  /**
   * `tls: true` also listens with TLS on `tlsPort`, with a fresh self-signed cert (`tlsCert`).
   * `limits` is written as the [limits] table (e.g. {max_presence_members: 2}).
   * Cluster nodes: `cluster` is the [cluster] table, `webhooks` the [webhooks] table (e.g.
   * {grace: 1}), `stateDir` the state_dir (kept by stop(): a restarted node reuses it), `port` a
   * fixed port (default: a free one). `detached: true` runs the daemon in its own process group, so
   * kill9() kills the whole group. `awaitReady: false` makes start() resolve as soon as the HTTP
   * port answers, whatever /ready says (a node whose Redis is down).
   */
  constructor({
    apps, server, tls = false, limits = null, webhooks = null, cluster = null, stateDir = null, port = null,
    detached = false, awaitReady = true, console = null,
  } = {}) {
    this.options = { apps, server, tls, limits, webhooks, cluster, stateDir, port, detached, awaitReady, console };
    this.console = console;
    this.apps = apps;
    this.server = server;
    this.limits = limits;
    this.tls = tls;
    this.webhooks = webhooks;
    this.cluster = cluster;
    this.stateDir = stateDir;
    this.fixedPort = port;
    this.detached = detached;
    this.awaitReady = awaitReady;
    this.chunks = [];
    this.proc = null;
    this.exited = null;
    this.exit = null;
  }

  async _start() {
    if (!fs.existsSync(TWISTD)) {
      throw new Error(`twistd not found at ${TWISTD} (set SOKETIFY_VENV)`);
    }
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'soketify-interop-'));
    this.configPath = path.join(this.dir, 'soketify.toml');
    fs.writeFileSync(this.configPath, await this._configText());
    this._launch();
    if (this.awaitReady) await this.waitReady(15000);
    else await this.waitListening(15000);
  }

  /** The TOML config of this daemon; picks the free port(s) it listens on. */
  async _configText() {
    this.port = this.fixedPort ?? (await freePort());
    let tls = null;
    if (this.tls) {
      this.tlsPort = await freePort();
      tls = { port: this.tlsPort, key: path.join(this.dir, 'tls.key'), cert: path.join(this.dir, 'tls.crt') };
      const made = spawnSync(PYTHON, [path.join(HERE, 'make_cert.py'), tls.key, tls.cert], { encoding: 'utf8' });
      if (made.status !== 0) throw new Error(`make_cert.py failed: ${made.stderr}`);
      this.tlsCert = tls.cert;
      this.tlsKey = tls.key;
    }
    return this._render();
  }

  _render() {
    const tls = this.tls ? { port: this.tlsPort, key: this.tlsKey, cert: this.tlsCert } : null;
    return renderConfig({
      port: this.port, server: this.server, apps: this.apps, tls, limits: this.limits,
      webhooks: this.webhooks, cluster: this.cluster, stateDir: this.stateDir, console: this.console,
    });
  }

  /** Run twistd on the written config, collecting its output. */
  _launch() {
    this.proc = spawn(TWISTD, ['-n', '--pidfile=', 'soketify', '--config', this.configPath], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PYTHONUNBUFFERED: '1' },
      detached: this.detached,
    });
    if (this.detached) trackDetached(this);
    const echo = process.env.SOKETIFY_INTEROP_LOGS === '1';
    const collect = (chunk) => {
      this.chunks.push(chunk);
      if (echo) process.stderr.write(chunk);
    };
    this.proc.stdout.on('data', collect);
    this.proc.stderr.on('data', collect);
    this.exited = new Promise((resolve) => {
      this.proc.on('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
  }

  /**
   * Rewrite the config file with `changes` (apps, server, limits, webhooks) over what it was started
   * with (same ports and TLS files), or with `text` as it is, send SIGHUP and resolve with the line
   * saying how the reload ended ("Reloaded ..." or "Reload refused ...").
   */
  async reload(changes = {}, { text = null, timeout = 15000 } = {}) {
    Object.assign(this, changes);
    const outcomes = () => this.output().split('\n').filter((l) => /Reloaded |Reload refused/.test(l));
    const before = outcomes().length;
    fs.writeFileSync(this.configPath, text ?? this._render());
    this.proc.kill('SIGHUP');
    await pollUntil(() => outcomes().length > before, { timeout, what: 'the reload to be logged' });
    return outcomes()[before];
  }

  get baseUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  wsUrl(key = APP.key, query = 'protocol=7&client=js&version=8.6.0&flash=false') {
    return `ws://127.0.0.1:${this.port}/app/${key}${query === null ? '' : `?${query}`}`;
  }

  output() {
    return Buffer.concat(this.chunks).toString('utf8');
  }

  async waitReady(timeout) {
    const deadline = Date.now() + timeout;
    for (;;) {
      if (this.exit) {
        throw new Error(`daemon exited before ready: ${JSON.stringify(this.exit)}`);
      }
      try {
        const res = await fetch(`${this.baseUrl}/ready`, { signal: AbortSignal.timeout(1000) });
        await res.arrayBuffer();
        if (res.status === 200) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`daemon not ready after ${timeout} ms`);
      await delay(100);
    }
  }

  /** Resolves once the HTTP port answers /ready at all (any status). */
  async waitListening(timeout) {
    const deadline = Date.now() + timeout;
    for (;;) {
      if (this.exit) throw new Error(`daemon exited before listening: ${JSON.stringify(this.exit)}`);
      try {
        const res = await fetch(`${this.baseUrl}/ready`, { signal: AbortSignal.timeout(1000) });
        await res.arrayBuffer();
        return res.status;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`daemon not listening after ${timeout} ms`);
      await delay(100);
    }
  }

  /** GET /ready: {status, json}. */
  async ready() {
    const res = await fetch(`${this.baseUrl}/ready`, { signal: AbortSignal.timeout(2000) });
    const { json } = await readBody(res);
    return { status: res.status, json };
  }

  /** True while the daemon process runs. */
  get running() {
    return this.proc !== null && this.exit === null;
  }

  /**
   * kill -9: no graceful stop, no flush. A `detached` daemon leads its own process group, and the
   * whole group is killed. Resolves with {code, signal} once it is gone.
   */
  async kill9() {
    if (this.proc && !this.exit) {
      try {
        if (this.detached) process.kill(-this.proc.pid, 'SIGKILL');
        else this.proc.kill('SIGKILL');
      } catch (err) {
        if (err.code !== 'ESRCH') throw err;
      }
    }
    return this.exited;
  }

  /** Send SIGTERM (once) and resolve with {code, signal} when it exits; SIGKILL after `timeout`. */
  async stop(timeout = 10000) {
    if (!this.proc) return null;
    if (!this.exit) {
      this.proc.kill('SIGTERM');
      try {
        await withTimeout(this.exited, timeout, 'daemon exit after SIGTERM');
      } catch (err) {
        if (this.detached) {
          try {
            process.kill(-this.proc.pid, 'SIGKILL');
          } catch {
            this.proc.kill('SIGKILL');
          }
        } else {
          this.proc.kill('SIGKILL');
        }
        await this.exited;
        this.killed = true;
      }
    }
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
    return this.exit;
  }

  /** Node server SDK (pusher 5) pointed at this daemon. */
  sdk(app = APP, extra = {}) {
    return new PusherServer({
      appId: app.id,
      key: app.key,
      secret: app.secret,
      host: '127.0.0.1',
      port: String(this.port),
      useTLS: false,
      timeout: 5000,
      ...extra,
    });
  }

  /**
   * Run operations with the Python SDK (pusher 3.3); see py_sdk.py. `tls` uses the TLS port;
   * `encryptionMasterKeyBase64` configures the SDK for private-encrypted- channels.
   */
  py(ops, app = APP, { tls = false, encryptionMasterKeyBase64 = null } = {}) {
    const conn = {
      app_id: app.id, key: app.key, secret: app.secret, host: '127.0.0.1',
      port: tls ? this.tlsPort : this.port, ssl: tls, ca_file: tls ? this.tlsCert : null,
      encryption_master_key_base64: encryptionMasterKeyBase64,
    };
    return runPySdk(conn, ops);
  }
}

// ---------------------------------------------------------------- Python SDK

/**
 * Run one or several Python SDK calls in one process. `ops` is an array of
 * {op, ...args}; resolves with an array of {ok, result} | {ok:false, error, message}.
 */
export function runPySdk(conn, ops, timeout = 20000) {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, [path.join(HERE, 'py_sdk.py')], {
      cwd: REPO_ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) {
        reject(new Error(`py_sdk.py exited with ${code}: ${err}${out}`));
        return;
      }
      try {
        resolve(JSON.parse(out));
      } catch (e) {
        reject(new Error(`py_sdk.py printed invalid JSON: ${out}\n${err}`));
      }
    });
    child.stdin.end(JSON.stringify({ conn, ops }));
  });
}

/** Like runPySdk but every op must succeed; returns the results. */
export async function pyOk(daemon, ops, app = APP, options = {}) {
  const results = await daemon.py(ops, app, options);
  results.forEach((r, i) => {
    if (!r.ok) throw new Error(`python SDK op ${JSON.stringify(ops[i])} failed: ${r.error}: ${r.message}`);
  });
  return results.map((r) => r.result);
}

// ---------------------------------------------------------------- REST signing

/**
 * Send a REST request signed as PROTOCOL.md section 7 describes, for requests the SDKs
 * refuse to build. Returns {status, text, json}.
 */
export async function signedRequest(
  daemon,
  { method = 'POST', path: reqPath, query = {}, body, app = APP, timestamp, signatureOverride } = {},
) {
  const bodyText = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
  const params = {
    auth_key: app.key,
    auth_timestamp: String(timestamp ?? Math.floor(Date.now() / 1000)),
    auth_version: '1.0',
    ...query,
  };
  if (bodyText.length > 0) params.body_md5 = crypto.createHash('md5').update(bodyText, 'utf8').digest('hex');
  const keys = Object.keys(params).sort((a, b) => (a.toLowerCase() < b.toLowerCase() ? -1 : a.toLowerCase() > b.toLowerCase() ? 1 : 0));
  const toSign = [method, reqPath, keys.map((k) => `${k.toLowerCase()}=${params[k]}`).join('&')].join('\n');
  const signature = signatureOverride ?? crypto.createHmac('sha256', app.secret).update(toSign).digest('hex');
  const qs = [...keys.map((k) => `${encodeURIComponent(k)}=${encodeURIComponent(params[k])}`), `auth_signature=${signature}`].join('&');
  const res = await fetch(`${daemon.baseUrl}${reqPath}?${qs}`, {
    method,
    body: bodyText.length > 0 ? bodyText : undefined,
    headers: bodyText.length > 0 ? { 'content-type': 'application/json' } : {},
    signal: AbortSignal.timeout(5000),
  });
  const { text, json } = await readBody(res);
  return { status: res.status, text, json, headers: res.headers };
}

/** A fetch response's body as text, and as JSON when it parses (else undefined). */
export async function readBody(res) {
  const text = await res.text();
  try {
    return { text, json: JSON.parse(text) };
  } catch {
    return { text, json: undefined };
  }
}

/** Await a Node SDK call expected to fail; returns the RequestError (status, body). */
export async function sdkError(promise) {
  try {
    const res = await promise;
    const text = await res.text();
    throw new Error(`expected the request to fail, got ${res.status}: ${text}`);
  } catch (err) {
    if (err && err.name === 'PusherRequestError') return err;
    throw err;
  }
}

// ---------------------------------------------------------------- raw ws client

/** Parse a frame's `data` the way pusher-js does: JSON strings are decoded, other strings kept. */
export function parseData(data) {
  if (typeof data !== 'string') return data;
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

/**
 * A plain `ws` WebSocket speaking the Pusher protocol by hand. Messages are kept in
 * `inbox` as {event, channel, data, raw, parsed}; `closed` resolves with {code, reason}.
 */
export class RawClient {
  static open(url, { label = 'raw client' } = {}) {
    return new RawClient(url, label);
  }

  /** Open and wait for pusher:connection_established; resolves with the client. */
  static async connect(daemon, { key = APP.key, label } = {}) {
    const client = new RawClient(daemon.wsUrl(key), label ?? `raw client (${key})`);
    const established = await client.waitEvent('pusher:connection_established');
    client.socketId = established.data.socket_id;
    client.activityTimeout = established.data.activity_timeout;
    return client;
  }

  constructor(url, label) {
    this.label = label;
    this.inbox = new Inbox(label);
    this.close = null;
    this.httpResponse = null;
    this.ws = new WebSocket(url, { perMessageDeflate: false });
    this.opened = new Promise((resolve) => this.ws.once('open', resolve));
    this.closed = new Promise((resolve) => {
      this.ws.on('close', (code, reason) => {
        this.close = { code, reason: reason.toString('utf8') };
        this.inbox.fail(new Error(`${label}: connection closed (${code} ${this.close.reason}) while waiting`));
        resolve(this.close);
      });
    });
    this.ws.on('error', (err) => {
      // A refused HTTP upgrade surfaces as an error, followed by close 1006.
      this.error = err;
      const m = /Unexpected server response: (\d+)/.exec(err.message);
      if (m) this.httpResponse = { status: Number(m[1]) };
    });
    this.ws.on('message', (raw, isBinary) => {
      const text = raw.toString('utf8');
      let parsed;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
      const msg = {
        raw: text,
        binary: isBinary,
        parsed,
        event: parsed && parsed.event,
        channel: parsed && parsed.channel,
        data: parsed ? parseData(parsed.data) : undefined,
      };
      this.inbox.push(msg);
    });
  }

  get messages() {
    return this.inbox.items;
  }

  send(obj) {
    this.ws.send(typeof obj === 'string' || Buffer.isBuffer(obj) ? obj : JSON.stringify(obj));
  }

  waitEvent(event, { channel, timeout, pred = () => true, from } = {}) {
    return this.inbox.waitFor(
      (m) => m.event === event && (channel === undefined || m.channel === channel) && pred(m),
      { timeout, from, what: `${event}${channel ? ` on ${channel}` : ''}` },
    );
  }

  waitClose(timeout = DEFAULT_TIMEOUT) {
    return withTimeout(this.closed, timeout, `${this.label} to be closed`);
  }

  async subscribe(channel, timeout) {
    this.send({ event: 'pusher:subscribe', data: { auth: '', channel } });
    return this.waitEvent('pusher_internal:subscription_succeeded', { channel, timeout });
  }

  /**
   * Round trip: ping and wait for the matching pong. The server handles a connection's
   * frames in order, so every frame sent before has been processed when this resolves.
   */
  async sync(timeout) {
    const from = this.inbox.items.length;
    this.send({ event: 'pusher:ping', data: {} });
    return this.waitEvent('pusher:pong', { timeout, from });
  }

  terminate() {
    if (this.ws.readyState !== WebSocket.CLOSED) this.ws.terminate();
  }
}

// ---------------------------------------------------------------- pusher-js

/** pusher-js options that point it at the daemon's plain WebSocket port. */
export function pusherJsOptions(daemon) {
  return {
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: daemon.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
  };
}

/** Connect an unmodified pusher-js 8 client to the daemon; resolves once 'connected'. */
export async function connectPusherJs(daemon, { key = APP.key, timeout = DEFAULT_TIMEOUT, ...options } = {}) {
  const client = new PusherJS(key, { ...pusherJsOptions(daemon), ...options });
  trackPusherJsSockets(client);
  try {
    await withTimeout(
      new Promise((resolve, reject) => {
        const onState = ({ current }) => {
          if (current === 'connected') resolve();
          if (current === 'failed' || current === 'unavailable') reject(new Error(`pusher-js state ${current}`));
        };
        if (client.connection.state === 'connected') resolve();
        client.connection.bind('state_change', onState);
      }),
      timeout,
      'pusher-js to reach state connected',
    );
  } catch (err) {
    client.disconnect();
    throw err;
  }
  return client;
}

// pusher-js in Node (faye-websocket) arms a 30 s close timer when, after a server close with a
// "refused" code (4001-4099, e.g. 4009), it closes its already closed socket; that timer keeps the
// test process alive for 30 s. Remember each client's sockets so cleanup can clear it.
const pusherJsSockets = new WeakMap();

function trackPusherJsSockets(client) {
  const sockets = new Set();
  pusherJsSockets.set(client, sockets);
  client.connection.bind('state_change', ({ current }) => {
    const socket = current === 'connected' && client.connection.connection?.transport?.socket;
    if (socket) sockets.add(socket);
  });
}

/** client.disconnect(), then clear the faye-websocket close timers of its sockets (see above). */
export function disconnectPusherJs(client) {
  client.disconnect();
  for (const socket of pusherJsSockets.get(client) ?? []) {
    if (socket._closeTimer) clearTimeout(socket._closeTimer);
  }
}

/**
 * Subscribe with pusher-js and record every event on the channel in an Inbox
 * ({event, data}); resolves with {channel, inbox} after pusher:subscription_succeeded.
 */
export async function subscribePusherJs(client, name, timeout = DEFAULT_TIMEOUT) {
  const channel = client.subscribe(name);
  const inbox = new Inbox(`pusher-js ${client.connection.socket_id} on ${name}`);
  channel.bind_global((event, data) => inbox.push({ event, data }));
  const outcome = await inbox.waitFor(
    (e) => e.event === 'pusher:subscription_succeeded' || e.event === 'pusher:subscription_error',
    { timeout, what: `subscription outcome on ${name}` },
  );
  if (outcome.event === 'pusher:subscription_error') {
    throw new Error(`subscription to ${name} failed: ${JSON.stringify(outcome.data)}`);
  }
  return { channel, inbox };
}

/**
 * The Pusher error code in a pusher-js connection 'error' event: {type:'PusherError', data:{code}}
 * after the handshake, wrapped as {type:'WebSocketError', error:{type:'PusherError', data}} during it.
 */
export function pusherJsErrorCode(err) {
  if (!err) return undefined;
  if (err.data && err.data.code !== undefined) return err.data.code;
  if (err.error && err.error.data) return err.error.data.code;
  return undefined;
}

/** A name unique within this process, usable as a channel name. */
let counter = 0;
/** Items with an `id` (members, users), sorted by it: for comparisons that ignore order. */
export const byId = (list) => [...list].sort((x, y) => String(x.id).localeCompare(String(y.id)));

/** How many items match `pred`. */
export const count = (items, pred) => items.filter(pred).length;

export function uniqueName(prefix) {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}`;
}

// ---------------------------------------------------------------- pusher-js auth

/**
 * pusher-js options `channelAuthorization` and `userAuthentication` whose custom handlers sign
 * with a Node server SDK, as a customer's auth endpoint would (`authorizeChannel`,
 * `authenticateUser`; with `encryptionMasterKeyBase64` on the SDK, encrypted channels also get
 * `shared_secret`).
 *   presenceData(socketId, channelName) -> {user_id, user_info} for presence- channels
 *     (return undefined to send no channel_data: presence via sign-in);
 *   userData(socketId) -> {id, user_info?, watchlist?} for pusher.signin();
 *   refuse(channelName) -> true to answer with an error as an endpoint's 403 would.
 * `sdk` is a Node server SDK, or a function (channelName, or null for sign-in) -> SDK.
 * `calls` records every handler call ({kind, socketId, channelName}).
 */
export function sdkAuthOptions(sdk, { presenceData, userData, refuse } = {}) {
  const calls = [];
  // Answer asynchronously, as an HTTP auth endpoint does (pusher-js emits a synchronous
  // failure from inside channel.subscribe(), before the caller could bind to it).
  const later = (callback) => (err, data) => setImmediate(() => callback(err, data));
  // `sdk` may also be a function (channelName | null) -> SDK, to sign some requests differently.
  const signer = (channelName) => (typeof sdk === 'function' ? sdk(channelName) : sdk);
  const channelAuthorization = {
    customHandler: ({ socketId, channelName }, done) => {
      const callback = later(done);
      calls.push({ kind: 'channel', socketId, channelName });
      if (refuse && refuse(channelName)) {
        callback(new Error(`refused ${channelName}`), null);
        return;
      }
      try {
        const data = channelName.startsWith('presence-') && presenceData
          ? presenceData(socketId, channelName)
          : undefined;
        callback(null, signer(channelName).authorizeChannel(socketId, channelName, data));
      } catch (err) {
        callback(err, null);
      }
    },
  };
  const userAuthentication = {
    customHandler: ({ socketId }, done) => {
      const callback = later(done);
      calls.push({ kind: 'user', socketId });
      try {
        if (!userData) throw new Error('no user data configured');
        callback(null, signer(null).authenticateUser(socketId, userData(socketId)));
      } catch (err) {
        callback(err, null);
      }
    },
  };
  return { channelAuthorization, userAuthentication, calls };
}

/**
 * Record a pusher-js client's connection state changes ('states': current state names),
 * connection errors ('errors') and raw protocol messages ('messages': {event, channel, data}).
 */
export function watchPusherJs(client) {
  const states = new Inbox('pusher-js states');
  const errors = new Inbox('pusher-js errors');
  const messages = new Inbox('pusher-js messages');
  client.connection.bind('state_change', (s) => states.push(s.current));
  client.connection.bind('error', (err) => errors.push(err));
  client.connection.bind('message', (m) => messages.push(m));
  return { states, errors, messages };
}

/**
 * A new pusher-js client of `key` on `daemon` is refused with error `code` and gives up without ever
 * being connected (over quota: 4004). It is added to `clients` for the caller's cleanup.
 */
export async function expectPusherJsRefused(daemon, key, code, clients) {
  const js = new PusherJS(key, pusherJsOptions(daemon));
  clients.push(js);
  const watch = watchPusherJs(js);
  await watch.errors.waitFor((e) => pusherJsErrorCode(e) === code, { what: `pusher-js error ${code}` });
  await watch.states.waitFor((s) => s === 'disconnected', { what: 'pusher-js gives up (disconnected)' });
  if (watch.states.items.includes('connected')) {
    throw new Error(`pusher-js was connected before being refused: ${watch.states.items}`);
  }
}

// ---------------------------------------------------------------- pysher

/**
 * Run pysher (Python client, protocol 6) in pysher_client.py: it connects to the daemon,
 * subscribes to `channels` (signing private-/presence- channels itself with `app.secret`)
 * and prints what it receives as JSON lines, collected in `inbox`:
 *   {type:'connected', socket_id} | {type:'subscribed', channel} | {type:'subscription_error', channel, data}
 *   | {type:'event', channel, event, data} | {type:'error', data} | {type:'pong'}
 * `stop()` closes its stdin (it disconnects and exits) and kills it if it lingers.
 */
export function runPysher(daemon, { channels, events, app = APP, secret = app.secret, userData = null }) {
  const config = { key: app.key, secret, host: '127.0.0.1', port: daemon.port, channels, events, user_data: userData };
  const child = spawn(PYTHON, [path.join(HERE, 'pysher_client.py'), JSON.stringify(config)], {
    cwd: REPO_ROOT,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const inbox = new Inbox('pysher');
  let buffered = '';
  let stderr = '';
  child.stdout.on('data', (chunk) => {
    buffered += chunk;
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (line) inbox.push(JSON.parse(line));
    }
  });
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  exited.then((exit) => inbox.fail(new Error(`pysher_client.py exited ${JSON.stringify(exit)}: ${stderr.slice(-2000)}`)));
  return {
    inbox,
    child,
    get stderr() {
      return stderr;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.stdin.end();
        try {
          await withTimeout(exited, 5000, 'pysher_client.py to exit');
        } catch {
          child.kill('SIGKILL');
          await exited;
        }
      }
    },
  };
}

// ---------------------------------------------------------------- redis-server (cluster tests)

export const REDIS_SERVER = process.env.SOKETIFY_REDIS_SERVER || 'redis-server';

/** Send PING over a fresh TCP connection; resolves true on +PONG, false on anything else. */
function redisPing(port, timeout = 1000) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let answer = '';
    const done = (ok) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeout);
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (d) => {
      answer += d.toString('latin1');
      if (answer.includes('\r\n')) done(answer.startsWith('+PONG'));
    });
    socket.on('error', () => done(false));
    socket.on('close', () => done(false));
  });
}

/**
 * A real redis-server on 127.0.0.1:`port` (a free one by default), without persistence
 * (`--save '' --appendonly no`) in a temp dir: a restart starts empty. `stop()` and `start()`
 * (again) keep the port; always `await redis.close()` in an after() hook.
 */
export class RedisServer {
  static async start({ port } = {}) {
    const redis = new RedisServer(port ?? (await freePort()));
    try {
      await redis.start();
    } catch (err) {
      await redis.close();
      throw err;
    }
    return redis;
  }

  constructor(port) {
    this.port = port;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'soketify-redis-'));
    this.proc = null;
    this.exited = null;
    this.chunks = [];
  }

  get url() {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  get running() {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  output() {
    return Buffer.concat(this.chunks).toString('utf8');
  }

  /** Start (or start again) on the same port and wait until it answers PING. */
  async start(timeout = 10000) {
    if (this.running) throw new Error('redis-server is already running');
    const args = [
      '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--dir', this.dir, '--daemonize', 'no', '--loglevel', 'warning',
    ];
    const proc = spawn(REDIS_SERVER, args, { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    proc.stdout.on('data', (c) => this.chunks.push(c));
    proc.stderr.on('data', (c) => this.chunks.push(c));
    this.exited = new Promise((resolve) => {
      proc.on('error', (err) => resolve({ error: err.message }));
      proc.on('exit', (code, signal) => resolve({ code, signal }));
    });
    const deadline = Date.now() + timeout;
    while (!(await redisPing(this.port))) {
      if (!this.running) {
        throw new Error(`redis-server exited before answering PING: ${JSON.stringify(await this.exited)}\n${this.output()}`);
      }
      if (Date.now() > deadline) throw new Error(`redis-server not answering PING after ${timeout} ms\n${this.output()}`);
      await delay(20);
    }
  }

  /** Stop it (SIGTERM, SIGKILL after `timeout`): its state is gone; the port is free again. */
  async stop(timeout = 5000) {
    if (!this.running) return;
    this.proc.kill('SIGTERM');
    try {
      await withTimeout(this.exited, timeout, 'redis-server to exit');
    } catch {
      this.proc.kill('SIGKILL');
      await this.exited;
    }
  }

  /** stop(), wait `downMs`, start() again on the same port (empty). */
  async restart({ downMs = 0 } = {}) {
    await this.stop();
    if (downMs > 0) await delay(downMs);
    await this.start();
  }

  /** stop() and remove its directory. */
  async close() {
    await this.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The [cluster] table of a node on `redis`. */
export function redisCluster(redis, { prefix, nodeTimeout = 2 } = {}) {
  return { engine: 'redis', redis_url: redis.url, prefix, node_timeout: nodeTimeout };
}

/**
 * Start `count` daemons (in parallel) as nodes of one cluster: the same `apps`, `cluster` table and
 * `webhooks` settings, each with its own port and state_dir (`node.stateDir`), each detached (so
 * kill9() works). Resolves with the started nodes; if one fails, the others are stopped.
 */
export async function startNodes(count, { apps, cluster, webhooks = null, limits = null, server } = {}) {
  const stateDirs = Array.from({ length: count }, () => fs.mkdtempSync(path.join(os.tmpdir(), 'soketify-node-state-')));
  const started = await Promise.allSettled(
    stateDirs.map((stateDir) => Daemon.start({ apps, cluster, webhooks, limits, server, stateDir, detached: true })),
  );
  const nodes = started.filter((r) => r.status === 'fulfilled').map((r) => r.value);
  const failed = started.find((r) => r.status === 'rejected');
  if (failed) {
    await Promise.all(nodes.map((n) => n.stop()));
    for (const dir of stateDirs) fs.rmSync(dir, { recursive: true, force: true });
    throw failed.reason;
  }
  return nodes;
}

/** Stop every node (SIGTERM, SIGKILL if it hangs) and remove their state dirs. */
export async function stopNodes(nodes) {
  await Promise.all(nodes.filter(Boolean).map((n) => n.stop().catch(() => n.kill9())));
  for (const n of nodes.filter(Boolean)) {
    if (n.stateDir) fs.rmSync(n.stateDir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- TCP forwarder

/**
 * A TCP port forwarding every new connection to 127.0.0.1:`target` (changeable at any time, as a
 * load balancer moving traffic to another node). Connections already forwarded stay where they
 * are; when either side closes, the other is closed too.
 */
export class TcpForwarder {
  static async start(target) {
    const fwd = new TcpForwarder(target);
    await new Promise((resolve, reject) => {
      fwd.server.once('error', reject);
      fwd.server.listen(0, '127.0.0.1', () => resolve());
    });
    fwd.port = fwd.server.address().port;
    return fwd;
  }

  constructor(target) {
    this.target = target;
    this.sockets = new Set();
    this.connections = []; // {target} per accepted connection, in order
    this.server = net.createServer((client) => {
      const upstream = net.connect({ host: '127.0.0.1', port: this.target });
      this.connections.push({ target: this.target });
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => {});
      }
      client.pipe(upstream);
      upstream.pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
  }

  async stop() {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(() => resolve()));
  }
}

// ---------------------------------------------------------------- pusher-js users

/**
 * pusher.signin() on a client whose userAuthentication answers for `userId`; resolves once
 * pusher:signin_success came and #server-to-user-{id} is subscribed, with
 * {watch (see watchPusherJs), watchlist (Inbox of {name, user_ids} watchlist events)}.
 */
export async function signInPusherJs(c, userId) {
  const watch = watchPusherJs(c);
  const watchlist = new Inbox(`watchlist of ${userId}`);
  c.user.watchlist.bind('online', (e) => watchlist.push({ name: 'online', user_ids: e.user_ids }));
  c.user.watchlist.bind('offline', (e) => watchlist.push({ name: 'offline', user_ids: e.user_ids }));
  c.signin();
  await watch.messages.waitFor((m) => m.event === 'pusher:signin_success', { what: `signin_success for ${userId}` });
  await watch.messages.waitFor(
    (m) => m.event === 'pusher_internal:subscription_succeeded' && m.channel === `#server-to-user-${userId}`,
    { what: `#server-to-user-${userId} subscribed` },
  );
  return { watch, watchlist };
}

/** Record `event` delivered through pusher.user.bind. */
export function userInbox(c, event) {
  const inbox = new Inbox(`user event ${event}`);
  c.user.bind(event, (data) => inbox.push(data));
  return inbox;
}
