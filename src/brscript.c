/*
 * brscript.c - the broker's Lua scripts (see sl_brscript.h for the keys).
 *
 * Each runs atomically in Redis.  The broker loads them once per
 * connection (SCRIPT LOAD) and runs them by EVALSHA.  Channel ids reach
 * them only as KEYS and ARGV, never in the script text.
 */
#include "sl_brscript.h"

#include <stddef.h>

/* Node liveness: a node's counts count only while P:node:<node> exists. */
#define LUA_LIVE_SUM                                                                        \
    "local function live_sum(n, np, skip)\n"                                                \
    "  local t = 0\n"                                                                       \
    "  local nc = redis.call('HGETALL', n)\n"                                               \
    "  for i = 1, #nc, 2 do\n"                                                              \
    "    if nc[i] ~= skip and redis.call('EXISTS', np .. nc[i]) == 1 then\n"                \
    "      t = t + tonumber(nc[i + 1]) end\n"                                               \
    "  end\n"                                                                               \
    "  return t\n"                                                                          \
    "end\n"

/* Presence: the live nodes, sorted (the pages' order). */
#define LUA_LIVE_NODES                                                                      \
    "local function live_nodes(nodes, prefix)\n"                                             \
    "  local live = {}\n"                                                                   \
    "  for _, nd in ipairs(redis.call('SMEMBERS', nodes)) do\n"                             \
    "    if redis.call('EXISTS', prefix .. ':node:' .. nd) == 1 then live[#live + 1] = nd end\n" \
    "  end\n"                                                                               \
    "  table.sort(live)\n"                                                                  \
    "  return live\n"                                                                       \
    "end\n"

/* A presence frame's excluded connection at its origin node: the n of the
 * entry's conn-id "conn-<ms>-<n>[.<node>]" (a connection is not told of its
 * own join or leave, review ro17 M1); "0" (nobody) if it is not one. */
#define LUA_CONN_NO                                                                         \
    "local function conn_no(c)\n"                                                           \
    "  return string.match(c, '^conn%-%-?%d+%-(%d+)') or '0'\n"                              \
    "end\n"

/* A channel made by a subscribe that nobody subscribes to any more goes
 * after the linger, or with its history if that lives longer. */
#define LUA_LINGER                                                                          \
    "local function linger(c, h, ms)\n"                                                     \
    "  if redis.call('HGET', c, 'auto') == '1' then\n"                                      \
    "    local t = redis.call('PTTL', h)\n"                                                 \
    "    if t < tonumber(ms) then t = tonumber(ms) end\n"                                   \
    "    redis.call('PEXPIRE', c, t)\n"                                                     \
    "  end\n"                                                                               \
    "end\n"

const char *const sl_brscript[SL_BRS__COUNT] = {
    /* PUBLISH  KEYS c h n m  ARGV head tail ttl-s exclude-sub nodeprefix new-epoch origin
     * exclude-conn.  Takes the next seq, retains and publishes in one step. */
    [SL_BRS_PUBLISH] = LUA_LIVE_SUM
    "if redis.call('EXISTS', KEYS[1]) == 0 then return {2} end\n"
    "local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)\n"
    "local epoch = redis.call('HGET', KEYS[1], 'epoch')\n"
    "if not epoch then epoch = ARGV[6]; redis.call('HSET', KEYS[1], 'epoch', epoch) end\n"
    "local msg = ARGV[1] .. seq .. ARGV[2]\n"
    "local ret = tonumber(redis.call('HGET', KEYS[1], 'ret') or '0')\n"
    "if ret > 0 then\n"
    "  redis.call('RPUSH', KEYS[2], msg)\n"
    "  redis.call('LTRIM', KEYS[2], -ret, -1)\n"
    "  redis.call('EXPIRE', KEYS[2], ARGV[3])\n"
    "  local t = redis.call('PTTL', KEYS[1])\n"
    "  if t > 0 and t < tonumber(ARGV[3]) * 1000 then\n"
    "    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 1000) end\n"
    "end\n"
    "redis.call('PUBLISH', KEYS[4], 'M' .. epoch .. '\\n' .. seq .. '\\n' .. ARGV[7] .. '\\n' ..\n"
    "  ARGV[8] .. '\\n' .. msg)\n"
    "local subs = live_sum(KEYS[3], ARGV[5], '') - tonumber(ARGV[4])\n"
    "if subs < 0 then subs = 0 end\n"
    "return {0, seq, epoch, subs}\n",

    /* JOIN  KEYS c h n channels nodech x  ARGV node count autocreate max ret rpc tel
     * new-epoch now since client-epoch from ring-oldest ring-epoch nodeprefix id
     * max-bytes.  Creates the channel when allowed, records this node's count and
     * checks max-subscribers across live nodes, and returns what a recovering
     * subscriber needs: recovered only when the epoch is the client's and every
     * message after since-seq is in the node's ring or the history (the history
     * must continue the ring: first <= from), and the history fits max-bytes. */
    [SL_BRS_JOIN] = LUA_LIVE_SUM
    "local created = 0\n"
    "if redis.call('EXISTS', KEYS[1]) == 0 then\n"
    "  if ARGV[3] == '0' then return {2} end\n"
    "  redis.call('DEL', KEYS[2], KEYS[3], KEYS[6])\n"
    "  redis.call('HSET', KEYS[1], 'epoch', ARGV[8], 'seq', 0, 'created', ARGV[9], 'max', ARGV[4],\n"
    "    'ret', ARGV[5], 'rpc', ARGV[6], 'tel', ARGV[7], 'auto', 1)\n"
    "  redis.call('SADD', KEYS[4], ARGV[16])\n"
    "  created = 1\n"
    "end\n"
    "local cfg = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'created', 'max', 'ret', 'rpc', 'tel')\n"
    "local epoch = cfg[1]\n"
    "if not epoch then epoch = ARGV[8]; redis.call('HSET', KEYS[1], 'epoch', epoch) end\n"
    "local last = tonumber(cfg[2] or '0')\n"
    "local mine = tonumber(ARGV[2])\n"
    "local total = live_sum(KEYS[3], ARGV[15], ARGV[1]) + mine\n"
    "if total > tonumber(cfg[4] or '1000') then\n"
    "  if mine > 1 then redis.call('HSET', KEYS[3], ARGV[1], mine - 1)\n"
    "  else redis.call('HDEL', KEYS[3], ARGV[1]) end\n"
    "  return {3, total - 1}\n"
    "end\n"
    "redis.call('PERSIST', KEYS[1])\n"
    "redis.call('HSET', KEYS[3], ARGV[1], mine)\n"
    "redis.call('SADD', KEYS[5], ARGV[16])\n"
    "local ret = tonumber(cfg[5] or '0')\n"
    "local len = redis.call('LLEN', KEYS[2])\n"
    "local first = last - len + 1\n"
    "local since = tonumber(ARGV[10])\n"
    "local recovered = 0\n"
    "local from = 1\n"
    "if since >= 0 then\n"
    "  local ro = tonumber(ARGV[13])\n"
    "  local rf = tonumber(ARGV[12])\n"
    "  local ring = ARGV[14] == epoch and ro > 0 and ro <= since + 1 and\n"
    "    (rf > last or (len > 0 and first <= rf))\n"
    "  if ARGV[11] == epoch and (since >= last or (len > 0 and first <= since + 1) or ring) then\n"
    "    recovered = 1\n"
    "    from = rf\n"
    "  end\n"
    "end\n"
    "local out = {}\n"
    "local lo = 0\n"
    "if len > 0 and ret > 0 then\n"
    "  lo = from - first\n"
    "  if lo < 0 then lo = 0 end\n"
    "  if len - lo > ret then lo = len - ret end\n"
    "  if lo < len then out = redis.call('LRANGE', KEYS[2], lo, -1) end\n"
    "end\n"
    "local bytes, cut = 0, 0\n"
    "for i = #out, 1, -1 do\n"
    "  bytes = bytes + #out[i]\n"
    "  if bytes > tonumber(ARGV[17]) then cut = i; break end\n"
    "end\n"
    "if cut > 0 then\n"
    "  local keep = {}\n"
    "  for i = cut + 1, #out do keep[#keep + 1] = out[i] end\n"
    "  out = keep\n"
    "  lo = lo + cut\n"
    "  recovered = 0\n"
    "end\n"
    "return {0, total, epoch, last, recovered, cfg[3] or '0', cfg[4] or '0', cfg[5] or '0',\n"
    "  cfg[6] or '0', cfg[7] or '1', created, first + lo, out}\n",

    /* SYNC  KEYS n nodech c h  ARGV node count id nodeprefix linger-ms: this node's
     * count, absolute; a channel made by a subscribe that nobody subscribes to
     * any more starts to expire. */
    [SL_BRS_SYNC] = LUA_LIVE_SUM LUA_LINGER
    "if tonumber(ARGV[2]) > 0 then\n"
    "  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]); redis.call('SADD', KEYS[2], ARGV[3])\n"
    "  redis.call('PERSIST', KEYS[3])\n"
    "else\n"
    "  redis.call('HDEL', KEYS[1], ARGV[1]); redis.call('SREM', KEYS[2], ARGV[3])\n"
    "  if live_sum(KEYS[1], ARGV[4], '') == 0 then linger(KEYS[3], KEYS[4], ARGV[5]) end\n"
    "end\n"
    "return 0\n",

    /* RPC  KEYS c n m  ARGV payload requester-subscribed nodeprefix */
    [SL_BRS_RPC] = LUA_LIVE_SUM
    "if redis.call('EXISTS', KEYS[1]) == 0 then return {2} end\n"
    "local total = live_sum(KEYS[2], ARGV[3], '') - tonumber(ARGV[2])\n"
    "if total <= 0 then return {6, 0} end\n"
    "redis.call('PUBLISH', KEYS[3], ARGV[1])\n"
    "return {0, total}\n",

    /* CATCHUP  KEYS c h channels x  ARGV after epoch new-epoch now max ret rpc tel id auto
     * max-count max-bytes
     * The messages after `after` of the known epoch: {0, epoch, last, first-seq,
     * msgs, more} - at most max-count of them and max-bytes (but at least one),
     * more = 1 when the node must ask again from the last one it got (a paged
     * catch-up: neither Redis nor the broker holds a whole history in one
     * answer); {1, epoch, last} when they are gone or the epoch changed (and when
     * Redis is behind what this node delivered in the same epoch: it lost writes,
     * so the epoch changes here, for every node); {3} when the channel was
     * deleted.  A channel Redis lost (restarted empty) is made again. */
    [SL_BRS_CATCHUP] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then\n"
    "  if redis.call('EXISTS', KEYS[4]) == 1 then return {3} end\n"
    "  redis.call('DEL', KEYS[2])\n"
    "  redis.call('HSET', KEYS[1], 'epoch', ARGV[3], 'seq', 0, 'created', ARGV[4], 'max', ARGV[5],\n"
    "    'ret', ARGV[6], 'rpc', ARGV[7], 'tel', ARGV[8], 'auto', ARGV[10])\n"
    "  redis.call('SADD', KEYS[3], ARGV[9])\n"
    "end\n"
    "local cfg = redis.call('HMGET', KEYS[1], 'epoch', 'seq')\n"
    "local epoch = cfg[1] or ARGV[3]\n"
    "local last = tonumber(cfg[2] or '0')\n"
    "if #epoch > 15 then\n"
    "  redis.call('HSET', KEYS[1], 'epoch', ARGV[3])\n"
    "  return {1, ARGV[3], last}\n"
    "end\n"
    "if epoch ~= ARGV[2] then return {1, epoch, last} end\n"
    "local after = tonumber(ARGV[1])\n"
    "if after > last then\n"
    "  redis.call('HSET', KEYS[1], 'epoch', ARGV[3])\n"
    "  return {1, ARGV[3], last}\n"
    "end\n"
    "if after == last then return {0, epoch, last, after + 1, {}, 0} end\n"
    "local len = redis.call('LLEN', KEYS[2])\n"
    "local first = last - len + 1\n"
    "if len == 0 or first > after + 1 then return {1, epoch, last} end\n"
    "local lo = after + 1 - first\n"
    "local out = redis.call('LRANGE', KEYS[2], lo, lo + tonumber(ARGV[11]) - 1)\n"
    "local bytes, n = 0, 0\n"
    "for i = 1, #out do\n"
    "  bytes = bytes + #out[i]\n"
    "  if i > 1 and bytes > tonumber(ARGV[12]) then break end\n"
    "  n = i\n"
    "end\n"
    "for i = #out, n + 1, -1 do out[i] = nil end\n"
    "local more = 0\n"
    "if lo + n < len then more = 1 end\n"
    "return {0, epoch, last, after + 1, out, more}\n",

    /* CREATE  KEYS c channels h n x  ARGV id epoch now max ret rpc tel */
    [SL_BRS_CREATE] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then\n"
    "  local c = redis.call('HMGET', KEYS[1], 'created', 'max', 'ret', 'rpc', 'tel', 'seq')\n"
    "  return {5, c[1] or '0', c[2] or '0', c[3] or '0', c[4] or '0', c[5] or '1', c[6] or '0'}\n"
    "end\n"
    "redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])\n"
    "redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'seq', 0, 'created', ARGV[3], 'max', ARGV[4],\n"
    "  'ret', ARGV[5], 'rpc', ARGV[6], 'tel', ARGV[7], 'auto', 0)\n"
    "redis.call('SADD', KEYS[2], ARGV[1])\n"
    "return {0, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], '0'}\n",

    /* DELETE  KEYS c h n channels ctl x nodes  ARGV id nodeprefix tombstone-ms prefix:
     * every node's presence entries of the channel go too (review rj17 M1: a
     * re-created channel listed the deleted one's subscribers); nobody is
     * told of leaves (every subscriber is told channel-deleted). */
    [SL_BRS_DELETE] = LUA_LIVE_SUM
    "if redis.call('EXISTS', KEYS[1]) == 0 then return {2} end\n"
    "local subs = live_sum(KEYS[3], ARGV[2], '')\n"
    "redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])\n"
    "for _, nd in ipairs(redis.call('SMEMBERS', KEYS[7])) do\n"
    "  redis.call('DEL', ARGV[4] .. ':{' .. ARGV[1] .. '}:p:' .. nd)\n"
    "  redis.call('SREM', ARGV[4] .. ':nodepr:' .. nd, ARGV[1])\n"
    "end\n"
    "redis.call('SREM', KEYS[4], ARGV[1])\n"
    "redis.call('SET', KEYS[6], '1', 'PX', ARGV[3])\n"
    "redis.call('PUBLISH', KEYS[5], 'D' .. ARGV[1])\n"
    "return {0, subs}\n",

    /* INFO  KEYS c h n  ARGV nodeprefix max-count max-bytes: the newest messages
     * of the history that fit max-count and max-bytes (at least one). */
    [SL_BRS_INFO] = LUA_LIVE_SUM
    "if redis.call('EXISTS', KEYS[1]) == 0 then return {2} end\n"
    "local c = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'created', 'max', 'ret', 'rpc', 'tel')\n"
    "local h = redis.call('LRANGE', KEYS[2], -tonumber(ARGV[2]), -1)\n"
    "local bytes, cut = 0, 0\n"
    "for i = #h, 1, -1 do\n"
    "  bytes = bytes + #h[i]\n"
    "  if i < #h and bytes > tonumber(ARGV[3]) then cut = i; break end\n"
    "end\n"
    "if cut > 0 then\n"
    "  local keep = {}\n"
    "  for i = cut + 1, #h do keep[#keep + 1] = h[i] end\n"
    "  h = keep\n"
    "end\n"
    "return {0, c[1] or '', c[2] or '0', c[3] or '0', c[4] or '0', c[5] or '0', c[6] or '0',\n"
    "  c[7] or '1', live_sum(KEYS[3], ARGV[1], ''), h}\n",

    /* SNAPSHOT  KEYS channels nodes  ARGV prefix cursor count: one slice of this
     * instance's channels (SSCAN from cursor, about `count` of them) with their
     * figures: {next-cursor, json}.  The live nodes are looked up once per call. */
    [SL_BRS_SNAPSHOT] =
    "local live = {}\n"
    "for _, nd in ipairs(redis.call('SMEMBERS', KEYS[2])) do\n"
    "  if redis.call('EXISTS', ARGV[1] .. ':node:' .. nd) == 1 then live[nd] = true end\n"
    "end\n"
    "local r = redis.call('SSCAN', KEYS[1], ARGV[2], 'COUNT', ARGV[3])\n"
    "local out = {}\n"
    "local n = 0\n"
    "for _, id in ipairs(r[2]) do\n"
    "  local k = ARGV[1] .. ':{' .. id .. '}:'\n"
    "  local c = redis.call('HMGET', k .. 'c', 'epoch', 'seq', 'created', 'max', 'ret', 'rpc', 'tel')\n"
    "  if c[1] then\n"
    "    local subs = 0\n"
    "    local nc = redis.call('HGETALL', k .. 'n')\n"
    "    for i = 1, #nc, 2 do if live[nc[i]] then subs = subs + tonumber(nc[i + 1]) end end\n"
    "    out[id] = {['config'] = {['max-subscribers'] = tonumber(c[4]),\n"
    "      ['message-retention'] = tonumber(c[5]), ['rpc-timeout-ms'] = tonumber(c[6]),\n"
    "      ['telemetry-enabled'] = c[7] ~= '0'}, ['created-at'] = tonumber(c[3]),\n"
    "      ['message-count'] = tonumber(c[2]), ['epoch'] = c[1],\n"
    "      ['subscriber-count'] = subs, ['retention-count'] = redis.call('LLEN', k .. 'h')}\n"
    "    n = n + 1\n"
    "  else redis.call('SREM', KEYS[1], id) end\n"
    "end\n"
    "if n == 0 then return {r[1], '{}'} end\n"
    "return {r[1], cjson.encode(out)}\n",

    /* HEARTBEAT  KEYS nodes node  ARGV node info ttl-ms prefix instance linger-ms:
     * refresh this node (conflict: the key was another running process's, a
     * node id in use twice), forget dead nodes (their counts; channels left
     * without subscribers start to expire; their presence entries, each
     * with a leave published on its channel, in slices), return {conflict,
     * live infos, lapsed: this node's key was not there}. */
    [SL_BRS_HEARTBEAT] = LUA_LINGER LUA_CONN_NO
    "local conflict = 0\n"
    "local cur = redis.call('GET', KEYS[2])\n"
    "if cur then\n"
    "  local ok, v = pcall(cjson.decode, cur)\n"
    "  if ok and type(v) == 'table' and v['instance'] and v['instance'] ~= ARGV[5] then\n"
    "    conflict = 1 end\n"
    "end\n"
    "redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])\n"
    "redis.call('SADD', KEYS[1], ARGV[1])\n"
    "local live = {}\n"
    "local budget = 1000\n"
    "for _, nd in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
    "  local v = redis.call('GET', ARGV[4] .. ':node:' .. nd)\n"
    "  if v then live[#live + 1] = v else\n"
    "    -- its presence: a leave published for each entry, at most 1000 a\n"
    "    -- beat (the node stays listed until all are gone)\n"
    "    local prs = ARGV[4] .. ':nodepr:' .. nd\n"
    "    while budget > 0 do\n"
    "      local id = redis.call('SRANDMEMBER', prs)\n"
    "      if not id then break end\n"
    "      local k = ARGV[4] .. ':{' .. id .. '}:'\n"
    "      local pk, cur = k .. 'p:' .. nd, '0'\n"
    "      repeat\n"
    "        local r = redis.call('HSCAN', pk, cur, 'COUNT', budget)\n"
    "        local e = r[2]\n"
    "        cur = r[1]\n"
    "        for i = 1, #e, 2 do\n"
    "          redis.call('PUBLISH', k .. 'm', 'J' .. nd .. '\\n' .. conn_no(e[i]) ..\n"
    "            '\\n{\"type\":\"leave\",\"channel-id\":' .. cjson.encode(id) .. ',\"info\":' ..\n"
    "            e[i + 1] .. '}')\n"
    "          redis.call('HDEL', pk, e[i])\n"
    "        end\n"
    "        budget = budget - 1 - #e / 2\n"
    "      until cur == '0' or budget <= 0\n"
    "      if redis.call('EXISTS', pk) == 0 then redis.call('SREM', prs, id) end\n"
    "    end\n"
    "    local chs = ARGV[4] .. ':nodech:' .. nd\n"
    "    for _, id in ipairs(redis.call('SMEMBERS', chs)) do\n"
    "      local k = ARGV[4] .. ':{' .. id .. '}:'\n"
    "      redis.call('HDEL', k .. 'n', nd)\n"
    "      if redis.call('HLEN', k .. 'n') == 0 then linger(k .. 'c', k .. 'h', ARGV[6]) end\n"
    "    end\n"
    "    redis.call('DEL', chs)\n"
    "    if redis.call('EXISTS', prs) == 0 then redis.call('SREM', KEYS[1], nd) end\n"
    "  end\n"
    "end\n"
    "return {conflict, live, cur and 0 or 1}\n",

    /* EPOCHS  KEYS runid channels renew  ARGV run-id epoch-base prefix count: run
     * at every connect, before anything else.  Redis restarted or failed over (its
     * run id is not the one recorded with the data) may have lost recent writes,
     * keeping channels whose seq went back: every channel takes a new epoch, so
     * every node resets its subscribers and clients learn recovered:false.
     * One slice per call (SSCAN, about `count` channels: Redis is never blocked
     * for all of them at once, rm17 M2); the renewal under way is recorded in
     * `renew` (cursor, base, for which run id), shared by every node that
     * connects meanwhile, and the run id is recorded only when the last slice is
     * done - a broker that dies half-way leaves it for the next.  A channel's
     * new epoch is the 8-character base and the renewal's counter in base 36,
     * modulo 36^7 (at most 7 digits: 15 characters, BR_EPOCH, whatever the
     * count - in decimal 10^7 channels made it 16, malformed: rg17 L6; the
     * base is new each renewal, so a wrapped counter repeats no old epoch
     * of its channel).  Returns {0}
     * (same Redis), {1} (renewal finished by this call), {2} (no data: nothing to
     * renew), {3} (more slices: call again). */
    [SL_BRS_EPOCHS] =
    "local was = redis.call('GET', KEYS[1])\n"
    "if was == ARGV[1] then return {0} end\n"
    "local r = redis.call('HMGET', KEYS[3], 'cursor', 'base', 'for')\n"
    "local cur, base = r[1], r[2]\n"
    "if not cur or r[3] ~= ARGV[1] then\n"
    "  if not was and not cur and redis.call('SCARD', KEYS[2]) == 0 then\n"
    "    redis.call('SET', KEYS[1], ARGV[1])\n"
    "    return {2}\n"
    "  end\n"
    "  cur, base = '0', ARGV[2]\n"
    "  redis.call('DEL', KEYS[3])\n"
    "  redis.call('HSET', KEYS[3], 'cursor', cur, 'base', base, 'for', ARGV[1], 'n', 0)\n"
    "end\n"
    "local s = redis.call('SSCAN', KEYS[2], cur, 'COUNT', ARGV[4])\n"
    "local digits = '0123456789abcdefghijklmnopqrstuvwxyz'\n"
    "for _, id in ipairs(s[2]) do\n"
    "  local c = ARGV[3] .. ':{' .. id .. '}:c'\n"
    "  if redis.call('EXISTS', c) == 1 then\n"
    "    local n, e = redis.call('HINCRBY', KEYS[3], 'n', 1) % 78364164096, ''\n"
    "    repeat\n"
    "      local d = n % 36\n"
    "      e = string.sub(digits, d + 1, d + 1) .. e\n"
    "      n = (n - d) / 36\n"
    "    until n == 0\n"
    "    redis.call('HSET', c, 'epoch', base .. e)\n"
    "  end\n"
    "end\n"
    "if s[1] == '0' then\n"
    "  redis.call('SET', KEYS[1], ARGV[1])\n"
    "  redis.call('DEL', KEYS[3])\n"
    "  return {1}\n"
    "end\n"
    "redis.call('HSET', KEYS[3], 'cursor', s[1])\n"
    "return {3}\n",

    /* PRES_SET  KEYS p nodepr m ps  ARGV conn-id entry id frame origin exclude:
     * a subscriber's presence entry on this node; with a frame (a join), that
     * published on the channel, in order with its messages - only when the
     * entry is new (a PRES_SYNC may have written it first), so a join is
     * published once.  A sliced PRES_SYNC under way (ps) lists it, so its
     * sweep keeps it.  Nothing when the channel is gone or deleted (its c
     * missing, its tombstone x there: P:{C}: is KEYS[3] without its "m"):
     * a PRES_SET that runs after a DELETE would re-create the deleted
     * channel's entries (review ro17 L3). */
    [SL_BRS_PRES_SET] =
    "local base = string.sub(KEYS[3], 1, -2)\n"
    "if redis.call('EXISTS', base .. 'c') == 0 or redis.call('EXISTS', base .. 'x') == 1 then\n"
    "  return 0 end\n"
    "local new = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('SADD', KEYS[2], ARGV[3])\n"
    "if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('SADD', KEYS[4], ARGV[1]) end\n"
    "if ARGV[4] ~= '' and new == 1 then\n"
    "  redis.call('PUBLISH', KEYS[3], 'J' .. ARGV[5] .. '\\n' .. ARGV[6] .. '\\n' .. ARGV[4]) end\n"
    "return 0\n",

    /* PRES_DEL  KEYS p nodepr m ps  ARGV conn-id id frame origin exclude: the entry
     * goes; with a frame (a leave), that is published - only when there was an
     * entry, so a leave is published once. */
    [SL_BRS_PRES_DEL] =
    "if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end\n"
    "if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end\n"
    "if ARGV[3] ~= '' then\n"
    "  redis.call('PUBLISH', KEYS[3], 'J' .. ARGV[4] .. '\\n' .. ARGV[5] .. '\\n' .. ARGV[3]) end\n"
    "return 1\n",

    /* PRES_GET  KEYS nodes c  ARGV prefix id node-index hscan-cursor count: a page
     * of the channel's presence over the live nodes (sorted), from the node at
     * node-index (1-based) and its HSCAN cursor: {next-index, next-cursor,
     * {conn-id, entry, ...}, live nodes}; next-index past the last: no more. */
    [SL_BRS_PRES_GET] = LUA_LIVE_NODES
    "if redis.call('EXISTS', KEYS[2]) == 0 then return {-1} end\n"
    "local live = live_nodes(KEYS[1], ARGV[1])\n"
    "local i, cur, want = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])\n"
    "local out = {}\n"
    "while i <= #live and #out < want * 2 do\n"
    "  local r = redis.call('HSCAN', ARGV[1] .. ':{' .. ARGV[2] .. '}:p:' .. live[i], cur, 'COUNT',\n"
    "    want - #out / 2)\n"
    "  for _, v in ipairs(r[2]) do out[#out + 1] = v end\n"
    "  cur = r[1]\n"
    "  if cur == '0' then i = i + 1 end\n"
    "end\n"
    "return {i, cur, out, #live}\n",

    /* PRES_STATS  KEYS nodes c  ARGV prefix id max-walk: {clients, users} over
     * the live nodes; users -1 past max-walk entries (not counted). */
    [SL_BRS_PRES_STATS] = LUA_LIVE_NODES
    "if redis.call('EXISTS', KEYS[2]) == 0 then return {-1} end\n"
    "local live = live_nodes(KEYS[1], ARGV[1])\n"
    "local clients, users, seen = 0, 0, {}\n"
    "for _, nd in ipairs(live) do\n"
    "  clients = clients + redis.call('HLEN', ARGV[1] .. ':{' .. ARGV[2] .. '}:p:' .. nd)\n"
    "end\n"
    "if clients > tonumber(ARGV[3]) then return {clients, -1} end\n"
    "for _, nd in ipairs(live) do\n"
    "  for _, v in ipairs(redis.call('HVALS', ARGV[1] .. ':{' .. ARGV[2] .. '}:p:' .. nd)) do\n"
    "    local ok, e = pcall(cjson.decode, v)\n"
    "    if ok and type(e) == 'table' and type(e['user']) == 'string' and not seen[e['user']] then\n"
    "      seen[e['user']] = true; users = users + 1 end\n"
    "  end\n"
    "end\n"
    "return {clients, users}\n",

    /* PRES_PURGE  KEYS nodeinst nodepr nodech  ARGV node instance prefix budget
     * linger-ms: run at every connect, after EPOCHS.  A node restarted under
     * the same --node-id (a new master: another instance) before its
     * heartbeat expired finds its previous process's presence entries and
     * counts still counted: they go now, as a dead node's do (a leave
     * published for each entry), at most `budget` entries per call; the
     * instance is recorded only when the last is gone, so a broker killed
     * half-way leaves the rest for the next (each call is atomic; every
     * state between calls is valid: some old entries gone, each with its
     * leave).  The same master's respawned broker finds its own instance:
     * nothing to do.  Returns {0} (nothing to do or done), {3} (more: call
     * again), with the number of leaves published second. */
    [SL_BRS_PRES_PURGE] = LUA_LINGER
    "if redis.call('GET', KEYS[1]) == ARGV[2] then return {0, 0} end\n"
    "local nd, budget, left = ARGV[1], tonumber(ARGV[4]), 0\n"
    "while budget > 0 do\n"
    "  local id = redis.call('SRANDMEMBER', KEYS[2])\n"
    "  if not id then break end\n"
    "  local k = ARGV[3] .. ':{' .. id .. '}:'\n"
    "  local pk, cur = k .. 'p:' .. nd, '0'\n"
    "  repeat\n"
    "    local r = redis.call('HSCAN', pk, cur, 'COUNT', budget)\n"
    "    local e = r[2]\n"
    "    cur = r[1]\n"
    "    for i = 1, #e, 2 do\n"
    "      redis.call('PUBLISH', k .. 'm', 'J' .. nd .. '\\n0\\n{\"type\":\"leave\",\"channel-id\":' ..\n"
    "        cjson.encode(id) .. ',\"info\":' .. e[i + 1] .. '}')\n"
    "      redis.call('HDEL', pk, e[i])\n"
    "      left = left + 1\n"
    "    end\n"
    "    budget = budget - 1 - #e / 2\n"
    "  until cur == '0' or budget <= 0\n"
    "  if redis.call('EXISTS', pk) == 0 then redis.call('SREM', KEYS[2], id) end\n"
    "end\n"
    "if redis.call('SCARD', KEYS[2]) > 0 then return {3, left} end\n"
    "for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do\n"
    "  local k = ARGV[3] .. ':{' .. id .. '}:'\n"
    "  redis.call('HDEL', k .. 'n', nd)\n"
    "  if redis.call('HLEN', k .. 'n') == 0 then linger(k .. 'c', k .. 'h', ARGV[5]) end\n"
    "end\n"
    "redis.call('DEL', KEYS[3])\n"
    "redis.call('SET', KEYS[1], ARGV[2])\n"
    "return {0, left}\n",

    /* PRES_SYNC  KEYS p nodepr m ps  ARGV id node join-leave entries mode cursor slice:
     * after a connect, this node's entries of channel id made equal to what
     * its registry has (`entries`: "conn-id\nentry\n" for each), so what a
     * lost link kept from Redis (a PRES_SET or PRES_DEL refused or lost) is
     * mended; for each entry removed a leave and each added a join is
     * published (join-leave "1"; a leave always, as for a dead node's).
     * mode "all": at once.  A channel with more subscribers here than one
     * call takes goes in slices (review ro17 H2): "first" then "more"
     * write their entries (joins) and list their conn-ids in ps (PRES_SET
     * lists a new one there too while ps exists); then "sweep" calls, one
     * HSCAN slice of p each from `cursor`, remove the entries ps does not
     * list (leaves); the last deletes ps.  A sweep without ps (expired:
     * the pass took 10 minutes, or lost) removes nothing.  Every state
     * between calls is valid (entries added, none wrongly removed).
     * Mode "all" removes at most about 2 x `slice` entries (review rx17
     * M2): when p holds more than `slice` entries past the wanted ones, it
     * works as "first" (ps then lists the wanted ones and "", so it exists
     * when none is wanted) and answers sweep 1: the caller sweeps.
     * A channel gone or deleted (no c, or its tombstone x): this node's
     * entries of it go, nothing published (review ro17 L3); UNLINK: a
     * big hash is freed in Redis's background thread, not in the script
     * (review rc17 L2: DEL of 10^6 entries took 375 ms).  Mode "drop"
     * does the same whatever c: the channel is another instance's now (the
     * --redis list changed), nobody follows it on this one (review rc17 L5).
     * Returns {added, removed, next sweep cursor ("0": done), sweep}. */
    [SL_BRS_PRES_SYNC] = LUA_CONN_NO
    "local base = string.sub(KEYS[3], 1, -2)\n"
    "if ARGV[5] == 'drop' or redis.call('EXISTS', base .. 'c') == 0 or\n"
    "    redis.call('EXISTS', base .. 'x') == 1 then\n"
    "  redis.call('UNLINK', KEYS[1], KEYS[4]); redis.call('SREM', KEYS[2], ARGV[1])\n"
    "  return {0, 0, '0'} end\n"
    "local mode = ARGV[5]\n"
    "local function tell(kind, c, e)\n"
    "  redis.call('PUBLISH', KEYS[3], 'J' .. ARGV[2] .. '\\n' .. conn_no(c) ..\n"
    "    '\\n{\"type\":\"' .. kind ..\n"
    "    '\",\"channel-id\":' .. cjson.encode(ARGV[1]) .. ',\"info\":' .. e .. '}')\n"
    "end\n"
    "local function listed()\n"
    "  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('SADD', KEYS[2], ARGV[1])\n"
    "  else redis.call('SREM', KEYS[2], ARGV[1]) end\n"
    "end\n"
    "local added, removed = 0, 0\n"
    "if mode == 'sweep' then\n"
    "  if redis.call('EXISTS', KEYS[4]) == 0 then return {0, 0, '0'} end\n"
    "  local r = redis.call('HSCAN', KEYS[1], ARGV[6], 'COUNT', 1000)\n"
    "  local e = r[2]\n"
    "  for i = 1, #e, 2 do\n"
    "    if redis.call('SISMEMBER', KEYS[4], e[i]) == 0 then\n"
    "      redis.call('HDEL', KEYS[1], e[i]); removed = removed + 1\n"
    "      tell('leave', e[i], e[i + 1])\n"
    "    end\n"
    "  end\n"
    "  if r[1] == '0' then redis.call('DEL', KEYS[4]) end\n"
    "  listed()\n"
    "  return {0, removed, r[1]}\n"
    "end\n"
    "local want, nwant, sweep = {}, 0, 0\n"
    "for c, e in string.gmatch(ARGV[4], '([^\\n]*)\\n([^\\n]*)\\n') do\n"
    "  want[c] = e; nwant = nwant + 1 end\n"
    "if mode == 'all' and redis.call('HLEN', KEYS[1]) > nwant + tonumber(ARGV[7]) then\n"
    "  mode = 'first'; sweep = 1 end\n"
    "local keep = mode == 'first' or (mode == 'more' and redis.call('EXISTS', KEYS[4]) == 1)\n"
    "if mode ~= 'more' then redis.call('DEL', KEYS[4]) end\n"
    "if mode == 'all' then\n"
    "  local have = redis.call('HGETALL', KEYS[1])\n"
    "  for i = 1, #have, 2 do\n"
    "    if not want[have[i]] then\n"
    "      redis.call('HDEL', KEYS[1], have[i]); removed = removed + 1\n"
    "      tell('leave', have[i], have[i + 1])\n"
    "    end\n"
    "  end\n"
    "end\n"
    "for c, e in pairs(want) do\n"
    "  if keep then redis.call('SADD', KEYS[4], c) end\n"
    "  if redis.call('HSET', KEYS[1], c, e) == 1 then\n"
    "    added = added + 1\n"
    "    if ARGV[3] == '1' then tell('join', c, e) end\n"
    "  end\n"
    "end\n"
    "if sweep == 1 then redis.call('SADD', KEYS[4], '') end\n"
    "if keep then redis.call('PEXPIRE', KEYS[4], 600000) end\n"
    "listed()\n"
    "return {added, removed, '0', sweep}\n",
    /* HISTORY  KEYS c h  ARGV since reverse limit max-bytes min-at: a page of the
     * channel's history (docs/protocol.md 4.11), read only: {0, epoch, last,
     * more, msgs} (msgs in page order), {2} no such channel (or deleted).  The
     * retained messages are the newest `ret` of the list (a lowered retention
     * trims the list at the next publish) published at or after min-at
     * (history-ttl-ms, by the messages' published-at, which rise with seq up
     * to the nodes' clock skew: found by bisection; 0: no age bound).
     * Forwards: seq > since (-1: from the oldest); reverse: seq < since (-1:
     * from the newest).  At most `limit` and max-bytes of them (at least one),
     * read in slices of 64 so a page of big messages is not copied whole
     * before the byte bound cuts it; more = 1 when more match. */
    [SL_BRS_HISTORY] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return {2} end\n"
    "local cfg = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'ret')\n"
    "local last = tonumber(cfg[2] or '0')\n"
    "local total = redis.call('LLEN', KEYS[2])\n"
    "local base = total - math.min(total, tonumber(cfg[3] or '0'))\n"
    "local minat = tonumber(ARGV[5])\n"
    "if minat > 0 then\n"
    "  local lo, hi = base, total\n"
    "  while lo < hi do\n"
    "    local mid = math.floor((lo + hi) / 2)\n"
    "    local m = redis.call('LINDEX', KEYS[2], mid) or ''\n"
    "    local at = tonumber(string.match(m, '\"published%-at\":(%-?%d+)}$') or '0')\n"
    "    if at < minat then lo = mid + 1 else hi = mid end\n"
    "  end\n"
    "  base = lo\n"
    "end\n"
    "local s0 = last - total + 1\n"
    "local since, limit, maxb = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    "local rev = ARGV[2] == '1'\n"
    "local from, avail\n"
    "if rev then\n"
    "  from = total - 1\n"
    "  if since >= 0 and since - 1 - s0 < from then from = since - 1 - s0 end\n"
    "  avail = from - base + 1\n"
    "else\n"
    "  from = base\n"
    "  if since >= 0 and since + 1 - s0 > from then from = since + 1 - s0 end\n"
    "  avail = total - from\n"
    "end\n"
    "if avail < 0 then avail = 0 end\n"
    "local out, bytes, full = {}, 0, false\n"
    "local want = math.min(avail, limit)\n"
    "while not full and #out < want do\n"
    "  local k = 4\n"
    "  if #out > 0 then k = math.floor((maxb - bytes) * #out / math.max(bytes, 1)) + 1 end\n"
    "  k = math.max(1, math.min(64, k, want - #out))\n"
    "  local got\n"
    "  if rev then\n"
    "    got = redis.call('LRANGE', KEYS[2], from - #out - k + 1, from - #out)\n"
    "  else\n"
    "    got = redis.call('LRANGE', KEYS[2], from + #out, from + #out + k - 1)\n"
    "  end\n"
    "  if #got == 0 then break end\n"
    "  local i, e, d = 1, #got, 1\n"
    "  if rev then i, e, d = #got, 1, -1 end\n"
    "  for x = i, e, d do\n"
    "    if #out > 0 and bytes + #got[x] > maxb then full = true; break end\n"
    "    bytes = bytes + #got[x]\n"
    "    out[#out + 1] = got[x]\n"
    "  end\n"
    "end\n"
    "local more = 0\n"
    "if avail > #out then more = 1 end\n"
    "return {0, cfg[1] or '', last, more, out}\n",
};
