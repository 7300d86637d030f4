// The client side of the package test (tests/package/run.sh), against the installed daemon:
// unmodified pusher-js connects with the app of the shipped conffile and gets an event sent with the
// Node server SDK; then a new [[apps]] table is appended to the conffile and the unit's ExecReload
// run; the new app must work at once and the first client must not have been disconnected.
//
//   node clients.mjs --port 6091 --config /etc/soketify/soketify.toml --reload '/bin/kill -HUP 123'
//
// Prints one line per step; exits 1 with "FAIL: <step>: <why>" at the first that fails.

import { execSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const PusherJS = require('pusher-js');
const PusherServer = require('pusher');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => (i % 2 ? pairs : [...pairs, [arg.replace(/^--/, ''), all[i + 1]]]), []),
);
const HOST = '127.0.0.1';
const PORT = Number(args.port);
// The app of the shipped etc/soketify.toml, and the one the test adds.
const FIRST = { appId: args['app-id'] ?? '100001', key: args['app-key'] ?? 'app-key', secret: args['app-secret'] ?? 'app-secret' };
const ADDED = { appId: '200002', key: 'package-test-key', secret: 'package-test-secret' };
const TIMEOUT = 10000;

let step = 'start';
const clients = [];

function fail(why) {
  console.error(`FAIL: ${step}: ${why}`);
  for (const client of clients) client.disconnect();
  process.exit(1);
}

function begin(name) {
  step = name;
  console.log(`-- ${name}`);
}

function within(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

/** A pusher-js client of `app`, once connected; `states` lists every state change after that. */
async function connect(app, timeout = TIMEOUT) {
  const client = new PusherJS(app.key, {
    cluster: 'mt1', wsHost: HOST, wsPort: PORT, forceTLS: false, enabledTransports: ['ws'], disableStats: true,
  });
  clients.push(client);
  client.states = [];
  client.connection.bind('state_change', ({ current }) => client.states.push(current));
  try {
    await within(new Promise((resolve, reject) => {
      client.connection.bind('state_change', ({ current }) => {
        if (current === 'connected') resolve();
        if (current === 'failed' || current === 'unavailable' || current === 'disconnected') {
          reject(new Error(`pusher-js state ${current}`));
        }
      });
      client.connection.bind('error', (error) => reject(new Error(`pusher-js error ${JSON.stringify(error?.data ?? error?.error?.data ?? error?.type)}`)));
    }), timeout, `pusher-js with key ${app.key} to connect`);
  } catch (err) {
    client.disconnect();
    throw err;
  }
  client.states = []; // from now on: any state change means the connection was lost
  return client;
}

/** Subscribe; resolves with a function that waits for the next `event` on the channel. */
async function subscribe(client, name) {
  const channel = client.subscribe(name);
  const received = [];
  const waiting = [];
  channel.bind_global((event, data) => {
    received.push({ event, data });
    for (const w of waiting.splice(0)) w();
  });
  const next = (event) => within(new Promise((resolve) => {
    const look = () => {
      const i = received.findIndex((e) => e.event === event);
      if (i >= 0) resolve(received.splice(i, 1)[0]);
      else waiting.push(look);
    };
    look();
  }), TIMEOUT, `${event} on ${name}`);
  await next('pusher:subscription_succeeded');
  return next;
}

function sdk(app) {
  return new PusherServer({ ...app, host: HOST, port: String(PORT), useTLS: false });
}

async function main() {
  if (!PORT || !args.config || !args.reload) fail('usage: --port N --config PATH --reload COMMAND');

  begin('pusher-js connects with the app of the shipped conffile');
  const first = await connect(FIRST);
  const socketId = first.connection.socket_id;
  const nextOnFirst = await subscribe(first, 'package-test');
  console.log(`   connected, socket_id ${socketId}, subscribed to package-test`);

  begin('an event sent with the Node server SDK reaches it');
  await sdk(FIRST).trigger('package-test', 'greeting', { n: 1 });
  const one = await nextOnFirst('greeting');
  if (one.data?.n !== 1) fail(`got ${JSON.stringify(one.data)}`);

  begin('the new app is refused before the reload');
  try {
    await connect(ADDED, 3000);
    fail(`key ${ADDED.key} was accepted before it was in the config`);
  } catch (err) {
    console.log(`   refused (${err.message})`);
  }

  begin('a new [[apps]] table appended to the conffile, then the unit\'s ExecReload');
  fs.appendFileSync(args.config, `\n# Added by the package test.\n[[apps]]\nid = "${ADDED.appId}"\nkey = "${ADDED.key}"\nsecret = "${ADDED.secret}"\n`);
  console.log(`   ${args.reload}`);
  execSync(args.reload, { stdio: 'inherit' });

  begin('pusher-js connects with the new app');
  const deadline = Date.now() + TIMEOUT;
  let added;
  while (!added) {
    try {
      added = await connect(ADDED, 2000);
    } catch (err) {
      if (Date.now() > deadline) fail(`still refused ${TIMEOUT} ms after the reload (${err.message})`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
  const nextOnAdded = await subscribe(added, 'package-test');
  await sdk(ADDED).trigger('package-test', 'greeting', { n: 2 });
  const two = await nextOnAdded('greeting');
  if (two.data?.n !== 2) fail(`got ${JSON.stringify(two.data)}`);

  begin('the first client kept its connection through the reload');
  await sdk(FIRST).trigger('package-test', 'greeting', { n: 3 });
  const three = await nextOnFirst('greeting');
  if (three.data?.n !== 3) fail(`got ${JSON.stringify(three.data)}`);
  if (first.connection.socket_id !== socketId) fail(`socket_id changed from ${socketId} to ${first.connection.socket_id}`);
  if (first.states.length) fail(`its connection went through: ${first.states.join(', ')}`);

  for (const client of clients) client.disconnect();
  console.log('-- clients: all passed');
  // pusher-js may keep timers (faye-websocket close timers) alive: do not wait for them.
  process.exit(0);
}

main().catch((err) => fail(err.stack || err.message));
