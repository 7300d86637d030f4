"""The Lua scripts of the Redis engine: each cluster-wide transition is one atomic script.

Layout (P is ``[cluster] prefix``; AK names one app: ``P:a<length of id>:<id>``, so no app id can be
mistaken for another; C is a channel name, which never holds ``:``):

- ``P:nodes``            sorted set: node -> deadline (ms, Redis time); past it the node is dead.
- ``P:apps``             hash: AK -> "<flags>\\n<app id>"; flags say what the app wants announced
                         (o occupied, v vacated, a member_added, r member_removed, m cache_miss
                         webhooks; c subscription counts).
- ``AK:ch:C``            hash: socket id -> user id ("" off presence): the subscribers, cluster-wide.
- ``AK:occ``             set of occupied channel names.
- ``AK:mc:C`` / ``AK:mi:C``  presence: user -> connections in the cluster / user -> user_info JSON.
- ``AK:users``           hash: user -> signed-in connections in the cluster (online while present).
- ``AK:us:U``            set of the sockets signed in as user U, cluster-wide (the console lists them).
- ``AK:cache:C``         the last event of a cache channel (frame text), with its TTL (PX).
- ``AK:miss:C``          set while a cache_miss webhook was sent for the still empty channel.
- ``P:n:<node>:subs``    hash: "AK\\nC\\nsocket" -> user: what a node holds, for its clean-up.
- ``P:n:<node>:users``   hash: "AK\\nsocket" -> user, its signed-in connections.
- ``P:n:<node>:conns``   hash: AK -> open connections (written by the heartbeat).
- ``P:n:<node>:wh``      webhook events the node took and has not yet written to its outbox.
- ``P:n:<node>:reaping`` while a dead node's holdings are being removed: when its webhooks are due.
- ``P:reaping``          set of nodes whose removal is under way (removed in bounded chunks, so
                         a large node never blocks Redis for long).
- ``P:wh:due`` / ``P:wh:ev``  webhook events to send: key -> due time / "app id\\nJSON". Removals
                         wait under a key naming what they remove, so a return within the grace
                         deletes them (and its own arrival is not announced either).

Pub/sub: ``AK:e:C`` carries "E<except socket>\\n<frame text>" (an event for the channel's
subscribers) and "C<count>\\n<origin node>" (a new subscriber count); ``P:ctl`` carries
"U1\\n<app>\\n<user>" / "U0..." (online / offline) and "T\\n<app>\\n<user>" (terminate).
Events are PUBLISHed inside the script that changes the state: pushes caused by other nodes reach a
node in the order Redis executed them relative to its own replies. (Its own pushes may come just
before or just after the reply, depending on the Redis version; nothing here depends on which.)
Needs Redis 6.2 or newer (RESP3, HRANDFIELD) or Valkey.
"""

from __future__ import annotations

from soketify.cluster.redis_client import Script

# ARGV[1] is always the prefix, ARGV[2] the node running the script.
_LIBRARY = r"""
local P, N = ARGV[1], ARGV[2]
local NODES, DUE, EV = P .. ':nodes', P .. ':wh:due', P .. ':wh:ev'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function node_key(node, kind) return P .. ':n:' .. node .. ':' .. kind end

local function alive(node) return redis.call('ZSCORE', NODES, node) end

local function is_presence(channel) return string.sub(channel, 1, 9) == 'presence-' end

local app_infos = {}
local function app_info(ak)
  local known = app_infos[ak]
  if not known then
    local info = redis.call('HGET', P .. ':apps', ak) or '\n'
    local nl = string.find(info, '\n', 1, true)
    known = {string.sub(info, 1, nl - 1), string.sub(info, nl + 1)}
    app_infos[ak] = known
  end
  return known[1], known[2]
end

local function wants(flags, flag) return string.find(flags, flag, 1, true) ~= nil end

local function split(text)
  local parts = {}
  for part in string.gmatch(text, '([^\n]*)\n?') do parts[#parts + 1] = part end
  return parts
end

-- webhook events: due now, or held under a key until `due` (a return within the grace deletes it)
local function queue(key, due, app_id, event)
  redis.call('ZADD', DUE, due, key)
  redis.call('HSET', EV, key, app_id .. '\n' .. cjson.encode(event))
end

local function queue_now(app_id, event)
  queue('i' .. redis.call('INCR', P .. ':wh:seq'), now_ms(), app_id, event)
end

local function cancelled(key)
  if redis.call('ZREM', DUE, key) == 1 then
    redis.call('HDEL', EV, key)
    return true
  end
  return false
end

local function member_removed_text(channel, user)
  return '{"event":"pusher_internal:member_removed","channel":' .. cjson.encode(channel) ..
    ',"data":' .. cjson.encode('{"user_id":' .. cjson.encode(user) .. '}') .. '}'
end

-- the other nodes hear a channel's new subscriber count (the origin node has it in its answer)
local function count_changed(ak, channel, origin)
  local flags = app_info(ak)
  if wants(flags, 'c') and not is_presence(channel) then
    local count = redis.call('HLEN', ak .. ':ch:' .. channel)
    redis.call('PUBLISH', ak .. ':e:' .. channel, 'C' .. count .. '\n' .. origin)
  end
end

-- after a socket's subscription was removed from AK:ch:C: member gone? channel vacated?
-- True when the user is no longer a member (its last connection there left).
local function left(ak, channel, user, due)
  local flags, app_id = app_info(ak)
  local member_gone = false
  if user ~= '' then
    local mc = ak .. ':mc:' .. channel
    if redis.call('HINCRBY', mc, user, -1) <= 0 then
      member_gone = true
      redis.call('HDEL', mc, user)
      redis.call('HDEL', ak .. ':mi:' .. channel, user)
      redis.call('PUBLISH', ak .. ':e:' .. channel, 'E\n' .. member_removed_text(channel, user))
      if wants(flags, 'r') then
        queue('r\n' .. ak .. '\n' .. channel .. '\n' .. user, due, app_id,
              {name = 'member_removed', channel = channel, user_id = user})
      end
    end
  end
  if redis.call('EXISTS', ak .. ':ch:' .. channel) == 0 then
    redis.call('SREM', ak .. ':occ', channel)
    redis.call('DEL', ak .. ':miss:' .. channel)
    if wants(flags, 'v') then
      queue('v\n' .. ak .. '\n' .. channel, due, app_id, {name = 'channel_vacated', channel = channel})
    end
  end
  return member_gone
end

local function signed_out(ak, user, socket)
  redis.call('SREM', ak .. ':us:' .. user, socket)
  local users = ak .. ':users'
  if redis.call('HINCRBY', users, user, -1) <= 0 then
    redis.call('HDEL', users, user)
    local _, app_id = app_info(ak)
    redis.call('PUBLISH', P .. ':ctl', 'U0\n' .. app_id .. '\n' .. user)
  end
end
"""


def _script(body: str) -> Script:
    return Script(_LIBRARY + body)


# ARGV: P, N, timeout ms, then (AK, "<flags>\n<app id>") pairs. 1 if registered, 0 if the id is taken.
REGISTER = _script(r"""
if alive(N) or redis.call('EXISTS', node_key(N, 'subs'), node_key(N, 'users'), node_key(N, 'conns'),
                          node_key(N, 'wh'), node_key(N, 'reaping')) > 0 then
  return 0
end
redis.call('ZADD', NODES, now_ms() + tonumber(ARGV[3]), N)
for i = 4, #ARGV, 2 do redis.call('HSET', P .. ':apps', ARGV[i], ARGV[i + 1]) end
return 1
""")

# ARGV: P, N, timeout ms, then (AK, open connections here) pairs.
# {0} if this node is not registered (declared dead, or Redis lost its state), else
# {1, {cluster-wide connections per AK given}, {dead nodes, and nodes whose removal is under way}}.
HEARTBEAT = _script(r"""
local now = now_ms()
if not alive(N) then return {0} end
redis.call('ZADD', NODES, now + tonumber(ARGV[3]), N)
local conns = node_key(N, 'conns')
local nodes = redis.call('ZRANGE', NODES, 0, -1)
local totals = {}
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] == '0' then redis.call('HDEL', conns, ARGV[i])
  else redis.call('HSET', conns, ARGV[i], ARGV[i + 1]) end
  local total = 0
  for _, node in ipairs(nodes) do
    total = total + tonumber(redis.call('HGET', node_key(node, 'conns'), ARGV[i]) or '0')
  end
  totals[#totals + 1] = total
end
local dead = redis.call('ZRANGEBYSCORE', NODES, '-inf', '(' .. now)
for _, node in ipairs(redis.call('SMEMBERS', P .. ':reaping')) do dead[#dead + 1] = node end
return {1, totals, dead}
""")

# ARGV: P, N, dead node, grace ms, force ("1": a node leaving, dead or not), most entries to take.
# Removes what the node held, as if each of its connections had closed: member_removed to the
# members, offline to the watchers; webhooks wait for the grace counted from the node's deadline.
# At most `limit` entries per call, so that Redis is never blocked for long: {0} if the node is
# alive (or already gone), {2, ...} if more is left (call again; any node may), {1, ...} once all is
# removed; after the status, app id, channel and user of each member this call removed.
# Each entry is removed exactly once, whichever nodes call.
REAP = _script(r"""
local dead, grace, force, limit = ARGV[3], tonumber(ARGV[4]), ARGV[5] == '1', tonumber(ARGV[6])
local now = now_ms()
local marker = node_key(dead, 'reaping')
local due = redis.call('GET', marker)
if not due then
  local deadline = alive(dead)
  if not force and (not deadline or tonumber(deadline) > now) then return {0} end
  due = (force or not deadline) and now + grace or math.max(now, tonumber(deadline) + grace)
  redis.call('ZREM', NODES, dead)
  redis.call('SET', marker, due)
  redis.call('SADD', P .. ':reaping', dead)
end
due = tonumber(due)
local subs, users = node_key(dead, 'subs'), node_key(dead, 'users')
local touched, reply = {}, {2}
local held = redis.call('HRANDFIELD', subs, limit, 'WITHVALUES')
for i = 1, #held, 2 do
  local where = split(held[i])
  redis.call('HDEL', subs, held[i])
  if redis.call('HDEL', where[1] .. ':ch:' .. where[2], where[3]) == 1 then
    if left(where[1], where[2], held[i + 1], due) then
      local _, app_id = app_info(where[1])
      reply[#reply + 1] = app_id
      reply[#reply + 1] = where[2]
      reply[#reply + 1] = held[i + 1]
    end
    touched[where[1] .. '\n' .. where[2]] = where
  end
end
for _, where in pairs(touched) do count_changed(where[1], where[2], '') end
local signed = redis.call('HRANDFIELD', users, math.max(1, limit - math.floor(#held / 2)), 'WITHVALUES')
for i = 1, #signed, 2 do
  redis.call('HDEL', users, signed[i])
  local where = split(signed[i])
  signed_out(where[1], signed[i + 1], where[2])
end
if redis.call('EXISTS', subs, users) > 0 then return reply end
-- webhook events it took and never confirmed go back in the queue
local taken = redis.call('HGETALL', node_key(dead, 'wh'))
for i = 1, #taken, 2 do
  redis.call('ZADD', DUE, now, taken[i])
  redis.call('HSET', EV, taken[i], taken[i + 1])
end
redis.call('DEL', node_key(dead, 'conns'), node_key(dead, 'wh'), marker)
redis.call('SREM', P .. ':reaping', dead)
reply[1] = 1
return reply
""")

# ARGV: P, N, AK, C, socket, user ("" off presence), user_info JSON, member limit,
#       member_added frame text, "1" for a cache channel.
# {-1}: this node is not registered; {-2}: the presence channel is full; else
# {new (1/0), subscribers, cached frame or "", 1 if the user became a member (else 0),
#  presence: user, info JSON, user, info JSON...}
JOIN = _script(r"""
if not alive(N) then return {-1} end
local ak, channel, socket, user = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local subscribers = ak .. ':ch:' .. channel
local flags, app_id = app_info(ak)
local new, member_added = 0, 0
if redis.call('HEXISTS', subscribers, socket) == 0 then
  local mc = ak .. ':mc:' .. channel
  if user ~= '' and redis.call('HEXISTS', mc, user) == 0 and redis.call('HLEN', mc) >= tonumber(ARGV[8]) then
    return {-2}
  end
  new = 1
  redis.call('HSET', subscribers, socket, user)
  redis.call('HSET', node_key(N, 'subs'), ak .. '\n' .. channel .. '\n' .. socket, user)
  if redis.call('HLEN', subscribers) == 1 then
    redis.call('SADD', ak .. ':occ', channel)
    if not cancelled('v\n' .. ak .. '\n' .. channel) and wants(flags, 'o') then
      queue_now(app_id, {name = 'channel_occupied', channel = channel})
    end
  end
  if user ~= '' and redis.call('HINCRBY', mc, user, 1) == 1 then
    member_added = 1
    redis.call('HSET', ak .. ':mi:' .. channel, user, ARGV[7])
    redis.call('PUBLISH', ak .. ':e:' .. channel, 'E' .. socket .. '\n' .. ARGV[9])
    if not cancelled('r\n' .. ak .. '\n' .. channel .. '\n' .. user) and wants(flags, 'a') then
      queue_now(app_id, {name = 'member_added', channel = channel, user_id = user})
    end
  end
  count_changed(ak, channel, N)
end
local reply = {new, redis.call('HLEN', subscribers), '', member_added}
if ARGV[10] == '1' then
  local cached = redis.call('GET', ak .. ':cache:' .. channel)
  if cached then
    reply[3] = cached
  elseif wants(flags, 'm') and redis.call('SET', ak .. ':miss:' .. channel, '1', 'NX') then
    queue_now(app_id, {name = 'cache_miss', channel = channel})
  end
end
if is_presence(channel) then
  local members = redis.call('HGETALL', ak .. ':mi:' .. channel)
  for i = 1, #members do reply[4 + i] = members[i] end
end
return reply
""")

# ARGV: P, N, AK, C, socket, grace ms. {-1} if the socket was not subscribed, else {the channel's
# subscribers left in the cluster, its user if no longer a member (else "")}.
LEAVE = _script(r"""
local ak, channel, socket = ARGV[3], ARGV[4], ARGV[5]
local subscribers = ak .. ':ch:' .. channel
local user = redis.call('HGET', subscribers, socket)
if not user then return {-1} end
redis.call('HDEL', subscribers, socket)
redis.call('HDEL', node_key(N, 'subs'), ak .. '\n' .. channel .. '\n' .. socket)
local member_gone = left(ak, channel, user, now_ms() + tonumber(ARGV[6]))
count_changed(ak, channel, N)
return {redis.call('HLEN', subscribers), member_gone and user or ''}
""")

# ARGV: P, N, AK, app id, socket, user, watched ids...
# {-1}: this node is not registered; else {1, online (1/0) per watched id}.
SIGN_IN = _script(r"""
if not alive(N) then return {-1} end
local ak, user = ARGV[3], ARGV[6]
local users = ak .. ':users'
if redis.call('HSETNX', node_key(N, 'users'), ak .. '\n' .. ARGV[5], user) == 1 then
  redis.call('SADD', ak .. ':us:' .. user, ARGV[5])
  if redis.call('HINCRBY', users, user, 1) == 1 then
    redis.call('PUBLISH', P .. ':ctl', 'U1\n' .. ARGV[4] .. '\n' .. user)
  end
end
local reply = {1}
for i = 7, #ARGV do reply[#reply + 1] = redis.call('HEXISTS', users, ARGV[i]) end
return reply
""")

# ARGV: P, N, AK, socket.
SIGN_OUT = _script(r"""
local field = ARGV[3] .. '\n' .. ARGV[4]
local user = redis.call('HGET', node_key(N, 'users'), field)
if not user then return 0 end
redis.call('HDEL', node_key(N, 'users'), field)
signed_out(ARGV[3], user, ARGV[4])
return 1
""")

# ARGV: P, N, AK, C, frame text, TTL ms, pub/sub envelope.
PUBLISH_CACHED = _script(r"""
local ak, channel = ARGV[3], ARGV[4]
redis.call('SET', ak .. ':cache:' .. channel, ARGV[5], 'PX', ARGV[6])
redis.call('DEL', ak .. ':miss:' .. channel)
return redis.call('PUBLISH', ak .. ':e:' .. channel, ARGV[7])
""")

# ARGV: P, N, AK, channel names... -> {subscribers, users (-1 off presence)} per name.
STATS = _script(r"""
local ak, reply = ARGV[3], {}
for i = 4, #ARGV do
  local channel = ARGV[i]
  reply[#reply + 1] = redis.call('HLEN', ak .. ':ch:' .. channel)
  reply[#reply + 1] = is_presence(channel) and redis.call('HLEN', ak .. ':mc:' .. channel) or -1
end
return reply
""")

# ARGV: P, N, AK, prefix -> {name, subscribers, users (-1 off presence), ...} of occupied channels.
OCCUPIED = _script(r"""
local ak, prefix, reply = ARGV[3], ARGV[4], {}
for _, channel in ipairs(redis.call('SMEMBERS', ak .. ':occ')) do
  if string.sub(channel, 1, #prefix) == prefix then
    reply[#reply + 1] = channel
    reply[#reply + 1] = redis.call('HLEN', ak .. ':ch:' .. channel)
    reply[#reply + 1] = is_presence(channel) and redis.call('HLEN', ak .. ':mc:' .. channel) or -1
  end
end
return reply
""")

# ARGV: P, N, AK, C -> {frame text or "", ms left}.
CACHED = _script(r"""
local key = ARGV[3] .. ':cache:' .. ARGV[4]
return {redis.call('GET', key) or '', redis.call('PTTL', key)}
""")

# ARGV: P, N, most events to take -> {key, app id\nJSON, ...}: due webhook events, each handed to
# exactly one node. They wait in the node's own hash until it confirms them (HDEL, once they are in
# its outbox); if the node dies first, its removal puts them back in the queue.
CLAIM = _script(r"""
if not alive(N) then return {} end
local keys = redis.call('ZRANGEBYSCORE', DUE, '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[3]))
local taken, reply = node_key(N, 'wh'), {}
for _, key in ipairs(keys) do
  redis.call('ZREM', DUE, key)
  local event = redis.call('HGET', EV, key)
  redis.call('HDEL', EV, key)
  if event then
    redis.call('HSET', taken, key, event)
    reply[#reply + 1] = key
    reply[#reply + 1] = event
  end
end
return reply
""")

ALL = (REGISTER, HEARTBEAT, REAP, JOIN, LEAVE, SIGN_IN, SIGN_OUT, PUBLISH_CACHED, STATS, OCCUPIED,
       CACHED, CLAIM)
