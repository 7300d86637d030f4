// The debug console at /console (issue 12) in a real headless Chromium (Debian's, driven by
// playwright-core), against a real twistd, with unmodified pusher-js clients, the Node SDK and a
// real webhook receiver: sign in (a wrong password refused), watch a client connect and subscribe,
// send it an event from the event creator, see the webhook entry with its status, filter, pause,
// inspect presence members, terminate a user (pusher-js gets 4009). Saves a screenshot of the
// console to tests/artifacts/console.png on every run.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  APP,
  Daemon,
  REPO_ROOT,
  RedisServer,
  appConfig,
  connectPusherJs,
  delay,
  disconnectPusherJs,
  pollUntil,
  pusherJsErrorCode,
  redisCluster,
  sdkAuthOptions,
  signInPusherJs,
  subscribePusherJs,
  watchPusherJs,
} from './helpers.mjs';
import { WebhookReceiver } from './webhook_helpers.mjs';

const CHROMIUM = process.env.SOKETIFY_CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(REPO_ROOT, 'tests', 'artifacts');
const PASSWORD = 'correct horse battery staple';

describe('debug console in a real browser', { skip: !fs.existsSync(CHROMIUM) && `no browser at ${CHROMIUM} (make test installs Debian's chromium)` }, () => {
  let daemon;
  let receiver;
  let browser;
  let page;
  const clients = [];
  // The webhook outbox's directory: the test's own, not the installed default /var/lib/soketify.
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'soketify-console-state-'));

  before(async () => {
    const { chromium } = await import('playwright-core');
    receiver = await WebhookReceiver.start({ app: APP });
    daemon = await Daemon.start({
      apps: [appConfig({ webhooks: [{ url: receiver.url('/hooks'), event_types: ['channel_occupied'] }] })],
      console: { enabled: true, password: PASSWORD },
      stateDir,
    });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      // As root in CI; no GPU; this machine's network is closed, so nothing in the background.
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    await page.goto(`${daemon.baseUrl}/console`);
  });

  after(async () => {
    for (const c of clients) disconnectPusherJs(c);
    if (page) {
      fs.mkdirSync(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: path.join(ARTIFACTS, 'console.png') }).catch(() => {});
    }
    if (browser) await browser.close();
    if (daemon) await daemon.stop();
    if (receiver) await receiver.stop();
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  const entry = (type, text = '') => page.locator(`#log li[data-type="${type}"]`, { hasText: text });

  it('refuses a wrong password, then signs in', async () => {
    await page.fill('#password', 'wrong');
    await page.click('#login-button');
    await page.locator('#login-error', { hasText: 'Wrong password' }).waitFor();
    assert.equal(await page.isVisible('#console'), false);
    await page.fill('#password', PASSWORD);
    await page.click('#login-button');
    await page.locator('#console').waitFor();
    await page.locator('#connection-state', { hasText: 'live' }).waitFor();
  });

  it('shows a pusher-js client connect and subscribe, and the webhook sent for it', async () => {
    const client = await connectPusherJs(daemon);
    clients.push(client);
    const socketId = client.connection.socket_id;
    await subscribePusherJs(client, 'console-news');
    await entry('connection_opened', socketId).waitFor();
    await entry('subscribed', 'console-news').waitFor();
    await entry('webhook', 'status=200').waitFor({ timeout: 10000 });
    assert.match(await entry('webhook', 'status=200').first().textContent(), /sent/);
  });

  it('sends an event from the event creator that pusher-js receives, and can replay it', async () => {
    const client = await connectPusherJs(daemon);
    clients.push(client);
    const { inbox } = await subscribePusherJs(client, 'console-creator');
    await page.fill('#ev-channel', 'console-creator');
    await page.fill('#ev-name', 'from-console');
    await page.fill('#ev-data', '{"n": 1}');
    await page.click('#ev-send');
    assert.deepEqual((await inbox.waitFor((e) => e.event === 'from-console')).data, { n: 1 });
    await entry('api_message', 'from-console').waitFor();
    await entry('api_message', 'from-console').first().locator('.replay').click();
    await inbox.waitFor((e) => e.event === 'from-console', { from: inbox.items.indexOf(inbox.items.find((e) => e.event === 'from-console')) + 1 });
  });

  it('filters by text and by type', async () => {
    await page.fill('#filter-text', 'console-creator');
    await page.waitForFunction(() => [...document.querySelectorAll('#log li')].every((li) => li.textContent.includes('console-creator')));
    assert.ok(await page.locator('#log li').count() > 0);
    await page.fill('#filter-text', '');
    await page.uncheck('#type-filters input[value="api_message"]');
    assert.equal(await entry('api_message').count(), 0);
    await page.check('#type-filters input[value="api_message"]');
    await entry('api_message').first().waitFor();
  });

  it('pauses (counting what it skips) and resumes', async () => {
    await page.click('#pause');
    const before = Number(await page.textContent('#skipped'));
    const shown = await page.locator('#log li').count();
    const sdk = daemon.sdk();
    for (let i = 0; i < 5; i += 1) await sdk.trigger('console-paused', 'while-paused', { i });
    await page.waitForFunction((n) => Number(document.querySelector('#skipped').textContent) >= n + 5, before);
    assert.equal(await page.locator('#log li').count(), shown);
    await page.click('#pause');
    await sdk.trigger('console-paused', 'after-resume', {});
    await entry('api_message', 'after-resume').waitFor();
  });

  it('inspects presence members with their user_info', async () => {
    const sdk = daemon.sdk();
    const client = await connectPusherJs(daemon, sdkAuthOptions(sdk, {
      presenceData: () => ({ user_id: 'alice', user_info: { name: 'Alice Liddell' } }),
    }));
    clients.push(client);
    await subscribePusherJs(client, 'presence-console');
    await entry('member_added', 'alice').waitFor();
    await page.click('#refresh-channels');
    await page.click('#channels li[data-channel="presence-console"]');
    await page.locator('#channel-detail', { hasText: 'Alice Liddell' }).waitFor();
  });

  it("terminates a user's connections: pusher-js gets 4009", async () => {
    const sdk = daemon.sdk();
    const client = await connectPusherJs(daemon, sdkAuthOptions(sdk, { userData: () => ({ id: 'u-terminated' }) }));
    clients.push(client);
    await signInPusherJs(client, 'u-terminated');
    const watch = watchPusherJs(client);
    await page.fill('#user-id', 'u-terminated');
    await page.click('#user-lookup');
    await page.locator('#user-detail', { hasText: client.connection.socket_id }).waitFor();
    await page.click('#terminate');
    await watch.errors.waitFor((e) => pusherJsErrorCode(e) === 4009, { what: 'pusher-js error 4009' });
    await entry('connection_closed', 'code=4009').waitFor();
  });
});

for (const engine of ['redis', 'local']) describe(`debug console with two workers on the ${engine} engine`, () => {
  let redis;
  let daemon;
  let receiver;
  const clients = [];
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'soketify-console-workers-'));
  const TOKEN = 'console-token-for-scripts-0123';

  before(async () => {
    if (engine === 'redis') redis = await RedisServer.start();
    receiver = await WebhookReceiver.start({ app: APP });
    daemon = await Daemon.start({
      // Webhooks go out from the supervisor (local engine) or from each worker (Redis).
      apps: [appConfig({ webhooks: [{ url: receiver.url('/hooks'), event_types: ['channel_occupied'] }] })],
      server: { workers: 2 },
      // A grace far longer than the wait for member_removed below: the console does not wait for it.
      webhooks: { grace: 10 },
      cluster: engine === 'redis' ? redisCluster(redis, { prefix: 'console-workers' }) : null,
      console: { enabled: true, password: PASSWORD, api_token: TOKEN },
      stateDir,
    });
  });

  after(async () => {
    for (const c of clients) disconnectPusherJs(c);
    if (daemon) await daemon.stop();
    if (redis) await redis.stop();
    if (receiver) await receiver.stop();
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  /** A request on a new TCP connection each time: the kernel spreads them over the workers. */
  const fresh = (url, options = {}) => fetch(url, { ...options, headers: { Connection: 'close', ...(options.headers || {}) } });

  it('a browser signed in on one worker is signed in on every worker', async () => {
    const login = await fresh(`${daemon.baseUrl}/console/api/login`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ password: PASSWORD }),
    });
    assert.equal(login.status, 200);
    const cookie = login.headers.get('set-cookie').split(';')[0];
    const nodes = new Set();
    for (let i = 0; i < 40 && (i < 4 || nodes.size < 2); i += 1) {
      const session = await (await fresh(`${daemon.baseUrl}/console/api/session`, { headers: { Cookie: cookie } })).json();
      assert.equal(session.signed_in, true);
      nodes.add(session.node);
    }
    assert.equal(nodes.size, 2, `answered by ${[...nodes]}`);
  });

  it('one stream sees the clients of both workers, each entry marked with its worker', async () => {
    const controller = new AbortController();
    const res = await fetch(`${daemon.baseUrl}/console/api/stream`, {
      headers: { Authorization: `Bearer ${TOKEN}` }, signal: controller.signal,
    });
    assert.equal(res.status, 200);
    const opened = new Map(); // socket id -> node
    const webhooks = [];
    const members = [];
    const reading = (async () => {
      const decoder = new TextDecoder();
      let buffered = '';
      for await (const chunk of res.body) {
        buffered += decoder.decode(chunk, { stream: true });
        let nl;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          const entry = JSON.parse(buffered.slice(0, nl));
          buffered = buffered.slice(nl + 1);
          if (entry.type === 'connection_opened') opened.set(entry.socket_id, entry.node);
          if (entry.type === 'webhook') webhooks.push(entry);
          if (entry.type.startsWith('member_')) members.push([entry.type, entry.user_id, entry.channel]);
        }
      }
    })().catch(() => {});
    await delay(2500); // the other worker hears that a console watches (each heartbeat)
    // The kernel hashes each connection to a worker (SO_REUSEPORT), so a run of connections can all land
    // on one worker: connect until both have some (40 on one alone happens once in 2^39 runs).
    const ids = [];
    const nodesSeen = () => new Set(ids.map((id) => opened.get(id)));
    while (ids.length < 40 && (ids.length < 4 || nodesSeen().size < 2)) {
      const client = await connectPusherJs(daemon);
      clients.push(client);
      ids.push(client.connection.socket_id);
      await pollUntil(() => opened.has(client.connection.socket_id), { timeout: 10000, what: `connection_opened of ${client.connection.socket_id} in the stream` });
    }
    assert.equal(nodesSeen().size, 2, `entries from both workers after ${ids.length} connections`);
    await subscribePusherJs(clients[0], 'console-workers-hooked');
    await pollUntil(() => webhooks.some((w) => w.outcome === 'sent' && w.status === 200),
      { timeout: 10000, what: 'the webhook attempt in the stream' });

    // One user through two connections (on either worker): one entry each way in the whole host,
    // when clients hear of it, long before the webhooks' grace.
    const sdk = daemon.sdk();
    const twins = [];
    for (let i = 0; i < 2; i += 1) {
      const twin = await connectPusherJs(daemon, sdkAuthOptions(sdk, { presenceData: () => ({ user_id: 'pat' }) }));
      twins.push(twin);
      await subscribePusherJs(twin, 'presence-console-workers');
    }
    await pollUntil(() => members.length === 1, { timeout: 5000, what: 'member_added in the stream' });
    for (const twin of twins) disconnectPusherJs(twin);
    await pollUntil(() => members.length === 2, { timeout: 5000, what: 'member_removed in the stream' });
    await delay(300); // nothing more comes
    assert.deepEqual(members, [['member_added', 'pat', 'presence-console-workers'],
      ['member_removed', 'pat', 'presence-console-workers']]);
    controller.abort();
    await reading;
  });

  it("the inspector on any worker shows a user's connections on every worker and members' user_info", async () => {
    const login = await fresh(`${daemon.baseUrl}/console/api/login`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ password: PASSWORD }),
    });
    const cookie = login.headers.get('set-cookie').split(';')[0];
    const sdk = daemon.sdk();
    // A socket id starts with its worker's number: sign in until the user is on both (bounded).
    const sockets = [];
    const workersOf = () => new Set(sockets.map((id) => id.split('.')[0]));
    while (sockets.length < 40 && workersOf().size < 2) {
      const client = await connectPusherJs(daemon, sdkAuthOptions(sdk, {
        userData: () => ({ id: 'quinn' }),
        presenceData: () => ({ user_id: 'quinn', user_info: { name: 'Quinn' } }),
      }));
      clients.push(client);
      await signInPusherJs(client, 'quinn');
      sockets.push(client.connection.socket_id);
    }
    assert.equal(workersOf().size, 2, `signed in on both workers after ${sockets.length} connections`);
    await subscribePusherJs(clients.at(-1), 'presence-inspected');
    const answeredBy = new Set();
    // Until both workers answered (40 fresh connections hashed to one alone: once in 2^39 runs).
    for (let i = 0; i < 40 && (i < 4 || answeredBy.size < 2); i += 1) {
      const user = await (await fresh(`${daemon.baseUrl}/console/api/user?app=${APP.id}&user_id=quinn`,
        { headers: { Cookie: cookie } })).json();
      answeredBy.add(user.node);
      assert.deepEqual(user.connections.map((c) => c.socket_id), [...sockets].sort());
      const here = user.connections.filter((c) => c.on_this_node);
      assert.ok(here.length > 0 && here.length < sockets.length, 'details of its own, ids of the others');
      assert.ok(here.every((c) => c.address === '127.0.0.1'));
      const channel = await (await fresh(`${daemon.baseUrl}/console/api/channel?app=${APP.id}&channel=presence-inspected`,
        { headers: { Cookie: cookie } })).json();
      assert.deepEqual(channel.members, [{ id: 'quinn', user_info: { name: 'Quinn' } }]);
    }
    assert.equal(answeredBy.size, 2, `answered by ${[...answeredBy]}`);
  });
});
