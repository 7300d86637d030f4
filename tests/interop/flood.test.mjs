// A connection flood from one address (issue 10): past [server] max_connections_per_ip the daemon
// refuses with 4100 (pusher-js backs off); connections from the address that were let in keep
// working, and a place freed is taken again.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { Daemon, RawClient, delay } from './helpers.mjs';

const PER_IP = 20;
const FLOOD = 60;

describe('a connection flood from one address', () => {
  let daemon;
  const clients = [];

  before(async () => {
    daemon = await Daemon.start({ server: { max_connections_per_ip: PER_IP } });
  });

  after(async () => {
    for (const client of clients) client.terminate();
    if (daemon) await daemon.stop();
  });

  it(`admits ${PER_IP} connections and refuses the rest with 4100`, async () => {
    for (let n = 0; n < FLOOD; n += 1) clients.push(RawClient.open(daemon.wsUrl(), { label: `flood ${n}` }));
    // Each either opens (connection_established) or is refused (pusher:error, then the close).
    const outcomes = await Promise.all(clients.map((client) => client
      .waitEvent('pusher:connection_established', { timeout: 10000 })
      .then(() => 'open', () => client.closed.then((close) => close.code))));
    const open = outcomes.filter((outcome) => outcome === 'open').length;
    const refused = outcomes.filter((outcome) => outcome === 4100).length;
    console.log(`flood: ${FLOOD} connections from one address, ${open} admitted, ${refused} refused with 4100`);
    assert.equal(open, PER_IP);
    assert.equal(refused, FLOOD - PER_IP);
    const admitted = clients.filter((client, i) => outcomes[i] === 'open');
    await admitted[0].sync();
    admitted[1].terminate();
    await delay(200);
    const again = await RawClient.connect(daemon, { label: 'after a place was freed' });
    clients.push(again);
  });
});
