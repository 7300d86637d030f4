// Helpers for the webhook interop tests: render a config with [webhooks] and [[apps.webhooks]]
// tables, run the daemon from that raw TOML (and SIGKILL it), run webhook_receiver.py (a real HTTP
// receiver validating every POST with the Python SDK) and validate each received webhook again
// with the Node SDK's `pusher.webhook({headers, rawBody}).isValid()`.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  APP,
  Daemon,
  Inbox,
  PYTHON,
  PusherServer,
  REPO_ROOT,
  freePort,
  withTimeout,
} from './helpers.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));

// ---------------------------------------------------------------- config

function tomlValue(value) {
  if (typeof value === 'string') return JSON.stringify(value); // JSON escapes are valid TOML basic strings
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new Error(`cannot write ${value} to TOML`);
    return String(value);
  }
  if (Array.isArray(value)) return `[${value.map(tomlValue).join(', ')}]`;
  if (value && typeof value === 'object') {
    // An inline table; keys quoted so header names such as X-Pusher-Key are written verbatim.
    return `{ ${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)} = ${tomlValue(v)}`).join(', ')} }`;
  }
  throw new Error(`cannot write ${typeof value} to TOML`);
}

function tomlTable(header, obj) {
  const lines = [header];
  for (const [k, v] of Object.entries(obj)) {
    if (v !== undefined) lines.push(`${k} = ${tomlValue(v)}`);
  }
  return lines.join('\n');
}

/**
 * The daemon's TOML: [server] (listening on 127.0.0.1:`port`, `stateDir`), [webhooks] (`settings`)
 * and one [[apps]] per app, each followed by its [[apps.webhooks]] tables
 * ({url, event_types?, filter?: {channel_name_starts_with?, channel_name_ends_with?}, headers?}).
 */
export function renderWebhookConfig({ port, stateDir, settings = {}, apps }) {
  const parts = [
    tomlTable('[server]', { listen: [`tcp:${port}:interface=127.0.0.1`], state_dir: stateDir }),
    tomlTable('[webhooks]', settings),
  ];
  for (const { webhooks = [], ...app } of apps) {
    parts.push(tomlTable('[[apps]]', app));
    for (const hook of webhooks) parts.push(tomlTable('[[apps.webhooks]]', hook));
  }
  return parts.join('\n\n') + '\n';
}

// ---------------------------------------------------------------- daemon

/**
 * The daemon started from a raw TOML text (its listen port is `port`). `stop()` (SIGTERM) comes
 * from Daemon; `kill9()` kills it without any chance to clean up.
 */
export class TomlDaemon extends Daemon {
  constructor({ toml, port }) {
    super({});
    this.toml = toml;
    this.port = port;
  }

  async _configText() {
    return this.toml;
  }

  /** SIGKILL: no graceful stop, no flush; resolves with {code, signal}. */
  async kill9() {
    if (!this.exit) this.proc.kill('SIGKILL');
    return this.exited;
  }
}

/** Rows left in the SQLite outbox (webhook_events); 0 when the file or table does not exist yet. */
export function outboxCount(stateDir) {
  const file = path.join(stateDir, 'webhooks.sqlite3');
  if (!fs.existsSync(file)) return 0;
  const script = [
    'import sqlite3, sys',
    'db = sqlite3.connect(sys.argv[1], timeout=5)',
    'try:',
    '    print(db.execute("SELECT count(*) FROM webhook_events").fetchone()[0])',
    'except sqlite3.OperationalError:',
    '    print(0)',
  ].join('\n');
  const run = spawnSync(PYTHON, ['-c', script, file], { encoding: 'utf8', timeout: 10000 });
  if (run.status !== 0) throw new Error(`outbox query failed: ${run.stderr}`);
  return Number(run.stdout.trim());
}

// ---------------------------------------------------------------- receiver

/** Header values as Node's http module would give them: lower-case names, repeated values joined. */
function nodeHeaders(headers) {
  return Object.fromEntries(Object.entries(headers).map(([k, v]) => [k, v.join(', ')]));
}

/**
 * webhook_receiver.py on `port` (0: any free port). Every received webhook is pushed to `inbox`
 * with `valid_node` added (the Node SDK's verdict); `fail` ({path: N}) answers the first N
 * requests to a path with 500.
 */
/** A predicate for webhook events of this name and channel (and user, if given). */
export const isHook = (name, channel, userId) => (e) =>
  e.name === name && e.channel === channel && (userId === undefined || e.user_id === userId);

export class WebhookReceiver {
  static async start({ port = 0, app = APP, fail = {} } = {}) {
    const receiver = new WebhookReceiver(port, app, fail);
    try {
      const listening = await receiver.lines.waitFor((l) => l.type === 'listening' || l.type === 'error', {
        timeout: 10000,
        what: 'webhook_receiver.py to listen',
      });
      if (listening.type === 'error') throw new Error(`webhook_receiver.py: ${listening.message}`);
      receiver.port = listening.port;
    } catch (err) {
      await receiver.stop();
      err.message += `\n--- receiver stderr ---\n${receiver.stderr}`;
      throw err;
    }
    return receiver;
  }

  constructor(port, app, fail) {
    this.app = app;
    this.sdk = new PusherServer({ appId: app.id, key: app.key, secret: app.secret });
    this.lines = new Inbox('webhook_receiver.py output');
    this.inbox = new Inbox('webhooks received');
    this.stderr = '';
    const args = [path.join(HERE, 'webhook_receiver.py'), '--port', String(port), '--app-id', app.id, '--key', app.key, '--secret', app.secret];
    for (const [p, n] of Object.entries(fail)) args.push('--fail', `${p}=${n}`);
    this.child = spawn(PYTHON, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let buffered = '';
    this.child.stdout.on('data', (chunk) => {
      buffered += chunk;
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl).trim();
        buffered = buffered.slice(nl + 1);
        if (!line) continue;
        const record = JSON.parse(line);
        this.lines.push(record);
        if (record.type === 'webhook') {
          record.valid_node = this.sdk.webhook({ headers: nodeHeaders(record.headers), rawBody: record.body }).isValid();
          this.inbox.push(record);
        }
      }
    });
    this.child.stderr.on('data', (d) => (this.stderr += d));
    this.exited = new Promise((resolve) => this.child.on('close', (code, signal) => resolve({ code, signal })));
    this.exited.then((exit) => {
      const err = new Error(`webhook_receiver.py exited ${JSON.stringify(exit)}: ${this.stderr.slice(-2000)}`);
      this.lines.fail(err);
      this.inbox.fail(err);
    });
  }

  url(p) {
    return `http://127.0.0.1:${this.port}${p}`;
  }

  /** Every webhook request received (including those answered with a failure). */
  get webhooks() {
    return this.inbox.items;
  }

  /** Webhooks to `p` that were answered 2xx (delivered), in arrival order. */
  delivered(p) {
    return this.inbox.items.filter((w) => w.path === p && w.status >= 200 && w.status < 300);
  }

  /** Events delivered to `p`, flattened in arrival order, optionally filtered. */
  events(p, pred = () => true) {
    return this.delivered(p).flatMap((w) => (w.events || []).map((e) => ({ ...e }))).filter(pred);
  }

  /**
   * Wait for a delivered webhook to `p` carrying an event matching `pred`; resolves {event, webhook}.
   * `from`: ignore the webhooks received before index `from` (e.g. `receiver.webhooks.length`).
   */
  async waitEvent(p, pred, { timeout = 5000, what = 'a webhook event', from = 0 } = {}) {
    const match = (w) => w.path === p && w.status >= 200 && w.status < 300 && (w.events || []).some(pred);
    const webhook = await this.inbox.waitFor(match, { timeout, from, what: `${what} at ${p}` });
    return { event: webhook.events.find(pred), webhook };
  }

  /** Answer the next `count` requests to `p` ("*": any path) with `status`; 0 stops failing. */
  failNext(p, count, status = 500) {
    return this._control({ fail: { [p]: count }, status });
  }

  /** Never answer the next `count` requests to `p` (the sender's request timeout must end them). */
  hangNext(p, count) {
    return this._control({ hang: { [p]: count } });
  }

  async _control(command) {
    const res = await fetch(this.url('/control'), {
      method: 'POST',
      body: JSON.stringify(command),
      signal: AbortSignal.timeout(5000),
    });
    if (res.status !== 200) throw new Error(`receiver control answered ${res.status}`);
    await res.arrayBuffer();
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      try {
        await withTimeout(this.exited, 5000, 'webhook_receiver.py to exit');
      } catch {
        this.child.kill('SIGKILL');
        await this.exited;
      }
    }
  }
}

/** Problems with one webhook as the official SDKs and PROTOCOL.md section 8 see it; [] when fine. */
export function webhookProblems(w, app = APP) {
  const problems = [];
  const one = (name) => (w.headers[name] || []);
  if (!w.valid_python) problems.push(`Python SDK validate_webhook rejected it (${w.python_error})`);
  if (!w.valid_node) problems.push('Node SDK webhook().isValid() is false');
  if (JSON.stringify(one('content-type')) !== JSON.stringify(['application/json'])) {
    problems.push(`Content-Type is ${JSON.stringify(one('content-type'))}, not exactly application/json`);
  }
  if (JSON.stringify(one('x-pusher-key')) !== JSON.stringify([app.key])) {
    problems.push(`X-Pusher-Key is ${JSON.stringify(one('x-pusher-key'))}`);
  }
  if (one('x-pusher-signature').length !== 1) problems.push(`X-Pusher-Signature is ${JSON.stringify(one('x-pusher-signature'))}`);
  let body;
  try {
    body = JSON.parse(w.body);
  } catch {
    problems.push('body is not JSON');
    return problems;
  }
  if (!Number.isInteger(body.time_ms)) problems.push(`time_ms is ${JSON.stringify(body.time_ms)}`);
  if (!Array.isArray(body.events) || body.events.length === 0) problems.push('events is not a non-empty array');
  const keys = Object.keys(body).sort().join(',');
  if (keys !== 'events,time_ms') problems.push(`body keys are ${keys}`);
  return problems;
}
