// Graceful stop (DESIGN.md "Graceful stop", PROTOCOL.md section 1: 4200 = reconnect now).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { Daemon, Inbox, RawClient, appConfig, connectPusherJs, pusherJsErrorCode, subscribePusherJs, uniqueName, withTimeout } from './helpers.mjs';

const STOP_WITHIN_MS = 10000;

describe('graceful stop on SIGTERM', () => {
  let daemon;
  const raws = [];
  const clients = [];

  before(async () => {
    daemon = await Daemon.start({ apps: [appConfig()] });
  });

  after(async () => {
    for (const r of raws) r.terminate();
    for (const c of clients) c.disconnect();
    if (daemon) await daemon.stop();
  });

  it('every client gets pusher:error 4200 then close 4200, pusher-js reconnects at once, and the daemon exits cleanly within 10 s', async () => {
    const name = uniqueName('stopping');
    for (let i = 0; i < 3; i += 1) {
      const r = await RawClient.connect(daemon, { label: `raw client ${i}` });
      if (i > 0) await r.subscribe(name);
      raws.push(r);
    }
    const pjs = await connectPusherJs(daemon);
    clients.push(pjs);
    await subscribePusherJs(pjs, name);
    const pjsErrors = new Inbox('pusher-js errors');
    pjs.connection.bind('error', (err) => pjsErrors.push(err));
    const pjsStates = new Inbox('pusher-js states');
    pjs.connection.bind('state_change', (s) => pjsStates.push(s.current));

    const started = Date.now();
    daemon.proc.kill('SIGTERM');

    for (const r of raws) {
      const close = await r.waitClose(STOP_WITHIN_MS);
      const errors = r.messages.filter((m) => m.event === 'pusher:error');
      assert.equal(errors.length, 1, `${r.label}: pusher:error frames ${JSON.stringify(errors.map((m) => m.raw))}`);
      assert.equal(errors[0].data.code, 4200, `${r.label}: ${errors[0].raw}`);
      assert.equal(close.code, 4200, `${r.label}: close ${close.code} ${close.reason}`);
    }

    // pusher-js reads the close code: 4200 means "retry now", so it goes back to connecting
    // (a 4000-4099 or >= 4300 code would make it give up and go to "disconnected").
    await pjsErrors.waitFor((e) => pusherJsErrorCode(e) === 4200, { timeout: STOP_WITHIN_MS, what: 'error 4200' });
    await pjsStates.waitFor((s) => s === 'connecting', { timeout: STOP_WITHIN_MS, what: 'state connecting' });
    assert.ok(!pjsStates.items.includes('disconnected'), `pusher-js states: ${pjsStates.items}`);

    const exit = await withTimeout(daemon.exited, Math.max(1, STOP_WITHIN_MS - (Date.now() - started)), 'daemon exit');
    // twistd re-raises the terminating signal after a clean shutdown, so "killed by SIGTERM"
    // is a clean exit too (systemd counts it as success); anything else is not.
    assert.ok(
      exit.code === 0 || (exit.code === null && exit.signal === 'SIGTERM'),
      `daemon exit ${JSON.stringify(exit)}`,
    );
    const output = daemon.output();
    assert.ok(!/Traceback|Unhandled error/i.test(output), `daemon logged an error while stopping:\n${output}`);
  });
});
