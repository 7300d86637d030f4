// Soketify debug console: reads /console/api/stream (newline-delimited JSON) and the inspector
// endpoints of the same server. No build step, no dependency, nothing fetched from elsewhere.
'use strict';

const MAX_KEPT = 2000;        // entries kept for filtering
const RENDER_EVERY_MS = 250;  // the log is redrawn at most this often...
const MAX_PER_RENDER = 60;    // ...with at most this many new entries; the rest are skipped (counted)

const state = { csrf: '', app: null, types: [], entries: [], incoming: [], paused: false,
  skipped: 0, stream: null };
const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const headers = { 'Content-Type': 'application/json', 'X-CSRF-Token': state.csrf };
  const res = await fetch(path, { credentials: 'same-origin', ...options, headers });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  return body;
}

// -- sign-in -----------------------------------------------------------------------------------

async function start() {
  const session = await api('/console/api/session');
  $('node').textContent = `node ${session.node}`;
  if (!session.signed_in) {
    $('login').hidden = false;
    $('password').focus();
    return;
  }
  state.csrf = session.csrf;
  state.types = session.types;
  $('logout').hidden = !session.password_needed;
  $('login').hidden = true;
  $('console').hidden = false;
  const select = $('app');
  select.replaceChildren(...session.apps.map((app) => new Option(`${app.id} (${app.key})`, app.id)));
  state.app = select.value;
  buildTypeFilters();
  openStream();
  refreshChannels();
  drawStats();
}

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  $('login-error').textContent = '';
  try {
    await api('/console/api/login', { method: 'POST', body: JSON.stringify({ password: $('password').value }) });
    $('password').value = '';
    await start();
  } catch (err) {
    $('login-error').textContent = err.message;
  }
});

// -- the live log ------------------------------------------------------------------------------

async function openStream() {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  state.entries = [];
  state.incoming = [];
  render(true);
  $('connection-state').textContent = 'connecting…';
  try {
    const res = await fetch(`/console/api/stream?app=${encodeURIComponent(state.app)}`,
      { credentials: 'same-origin', signal: controller.signal });
    if (res.status === 401) { signedOut(); return; }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    $('connection-state').textContent = 'live';
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffered = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line) receive(JSON.parse(line));
      }
    }
    $('connection-state').textContent = 'stream ended';
  } catch (err) {
    if (controller.signal.aborted) return;
    $('connection-state').textContent = `disconnected (${err.message}); retrying`;
  }
  if (!controller.signal.aborted) setTimeout(openStream, 2000);
}

function signedOut() {
  if (state.stream) state.stream.abort();
  state.stream = null;
  $('console').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('connection-state').textContent = 'signed out';
}

$('logout').addEventListener('click', async () => {
  await api('/console/api/logout', { method: 'POST', body: '{}' }).catch(() => {});
  signedOut();
});

function receive(entry) {
  if (entry.type === 'stream_opened') return;
  if (entry.type === 'skipped') { state.skipped += entry.count; return; }
  if (state.paused) { state.skipped += 1; return; }
  state.incoming.push(entry);
}

function matches(entry) {
  const box = document.querySelector(`#type-filters input[value="${entry.type}"]`);
  if (box && !box.checked) return false;
  const text = $('filter-text').value.trim().toLowerCase();
  return !text || JSON.stringify(entry).toLowerCase().includes(text);
}

function details(entry) {
  const { time, node, app_id, type, ...rest } = entry;
  return Object.entries(rest).filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join('  ');
}

function row(entry) {
  const li = document.createElement('li');
  li.dataset.type = entry.type;
  if (entry.outcome) li.dataset.outcome = entry.outcome;
  const time = new Date(entry.time * 1000).toLocaleTimeString([], { hour12: false });
  const cells = [time, entry.type + (entry.outcome ? ` ${entry.outcome}` : ''), details(entry)];
  ['time', 'type', 'details'].forEach((name, i) => {
    const span = document.createElement('span');
    span.className = name;
    span.textContent = cells[i];
    li.append(span);
  });
  const extra = document.createElement('span');
  extra.className = 'node';
  extra.textContent = entry.node;
  if (entry.type === 'api_message') {
    const replay = document.createElement('button');
    replay.className = 'replay';
    replay.type = 'button';
    replay.textContent = 'Replay';
    replay.addEventListener('click', () => send({ channels: entry.channels, name: entry.event, data: entry.data }));
    extra.append(' ', replay);
  }
  li.append(extra);
  return li;
}

function render(all = false) {
  let fresh = state.incoming;
  state.incoming = [];
  if (fresh.length > MAX_PER_RENDER) {  // faster than anyone reads: keep the newest
    state.skipped += fresh.length - MAX_PER_RENDER;
    fresh = fresh.slice(-MAX_PER_RENDER);
  }
  state.entries.push(...fresh);
  if (state.entries.length > MAX_KEPT) state.entries.splice(0, state.entries.length - MAX_KEPT);
  const log = $('log');
  if (all) {
    log.replaceChildren(...state.entries.filter(matches).reverse().map(row));
  } else {
    const rows = fresh.filter(matches).reverse().map(row);
    log.prepend(...rows);
    while (log.children.length > MAX_KEPT) log.lastChild.remove();
  }
  $('skipped').textContent = String(state.skipped);
  $('shown').textContent = String(log.children.length);
}
setInterval(() => {
  if (state.incoming.length) render();
  else $('skipped').textContent = String(state.skipped);  // paused: only the count moves
}, RENDER_EVERY_MS);

function buildTypeFilters() {
  $('type-filters').replaceChildren(...state.types.filter((t) => t !== 'skipped').map((type) => {
    const label = document.createElement('label');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.value = type;
    box.checked = true;
    box.addEventListener('change', () => render(true));
    label.append(box, ` ${type}`);
    return label;
  }));
}

$('filter-text').addEventListener('input', () => render(true));
$('pause').addEventListener('click', () => {
  state.paused = !state.paused;
  $('pause').textContent = state.paused ? 'Resume' : 'Pause';
});
$('app').addEventListener('change', () => {
  state.app = $('app').value;
  openStream();
  refreshChannels();
});

// -- the event creator -------------------------------------------------------------------------

async function send(event) {
  $('ev-result').textContent = '';
  try {
    await api('/console/api/trigger', { method: 'POST', body: JSON.stringify({ app: state.app, ...event }) });
    $('ev-result').textContent = `Sent ${event.name}`;
  } catch (err) {
    $('ev-result').textContent = `Refused: ${err.message}`;
  }
}

$('ev-send').addEventListener('click', () => {
  let data = $('ev-data').value;
  try { data = JSON.stringify(JSON.parse(data)); } catch { /* sent as the string it is */ }
  send({ channels: [$('ev-channel').value], name: $('ev-name').value, data });
});

// -- the inspector -----------------------------------------------------------------------------

async function refreshChannels() {
  if (!state.app) return;
  let channels;
  try {
    ({ channels } = await api(`/console/api/channels?app=${encodeURIComponent(state.app)}`));
  } catch (err) {
    $('channel-detail').textContent = err.message;
    return;
  }
  $('channels').replaceChildren(...channels.map((channel) => {
    const li = document.createElement('li');
    li.textContent = `${channel.name}  (${channel.subscription_count}${channel.user_count == null ? '' : `, ${channel.user_count} users`})`;
    li.dataset.channel = channel.name;
    li.addEventListener('click', async () => {
      try {
        const detail = await api(`/console/api/channel?app=${encodeURIComponent(state.app)}&channel=${encodeURIComponent(channel.name)}`);
        $('channel-detail').textContent = JSON.stringify(detail, null, 2);
      } catch (err) {
        $('channel-detail').textContent = err.message;
      }
    });
    return li;
  }));
}
$('refresh-channels').addEventListener('click', refreshChannels);

$('user-lookup').addEventListener('click', async () => {
  try {
    const user = await api(`/console/api/user?app=${encodeURIComponent(state.app)}&user_id=${encodeURIComponent($('user-id').value)}`);
    $('user-detail').textContent = JSON.stringify(user, null, 2);
  } catch (err) {
    $('user-detail').textContent = err.message;
  }
});
$('terminate').addEventListener('click', async () => {
  try {
    await api('/console/api/terminate', { method: 'POST', body: JSON.stringify({ app: state.app, user_id: $('user-id').value }) });
    $('user-detail').textContent = `Terminated the connections of ${$('user-id').value}`;
  } catch (err) {
    $('user-detail').textContent = `Refused: ${err.message}`;
  }
});

// -- stats -------------------------------------------------------------------------------------

function chart(svg, values) {
  const max = Math.max(1, ...values);
  const points = values.map((v, i) => `${(i / Math.max(1, values.length - 1)) * 300},${58 - (v / max) * 54}`);
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', points.join(' '));
  const label = document.createElementNS('http://www.w3.org/2000/svg', 'text');
  label.setAttribute('x', '4');
  label.setAttribute('y', '12');
  label.setAttribute('font-size', '10');
  label.textContent = `now ${values.length ? Math.round(values[values.length - 1]) : 0}, max ${Math.round(max)}`;
  svg.replaceChildren(line, label);
}

async function drawStats() {
  if (!state.app) return;
  try {
    const stats = await api(`/console/api/stats?app=${encodeURIComponent(state.app)}`);
    chart($('chart-connections'), stats.connections);
    chart($('chart-messages'), stats.sent);
  } catch { /* next time */ }
}
setInterval(drawStats, 2000);

start().catch((err) => { $('connection-state').textContent = err.message; });
