-- Shared preamble of every queue script (prepended in Rust; see src/scripts.rs).
-- KEYS[1] is always "<prefix>pending": every key the scripts touch starts with the same
-- prefix and therefore carries the same {hash tag}, so they all live in one cluster slot.
-- ARGV[1] prefix, ARGV[2] events stream max length, ARGV[3] retention of finished jobs (ms),
-- ARGV[4] max finished jobs kept. Script-specific arguments start at ARGV[5].
local P = ARGV[1]
local EVMAX = tonumber(ARGV[2])
local RETENTION = tonumber(ARGV[3])
local MAX_FINISHED = tonumber(ARGV[4])
local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)

local function jkey(id) return P .. 'job:' .. id end
local function lkey(id) return P .. 'log:' .. id end

-- Every event names the job's account and reseller so fan-out can filter by tenant without
-- reading the job. Callers pass them from the job fields they already read.
local function emit(id, typ, data, account, reseller)
  return redis.call('XADD', P .. 'events', 'MAXLEN', '~', EVMAX, '*', 'job', id, 'type', typ,
    'data', data, 'account', account or '', 'reseller', reseller or '')
end

-- Writes that several jobs of one call share are gathered and made once, by flush_batches():
-- jobs made ready at the back of their kind's list (one RPUSH per kind) and finish times (one
-- ZADD on `finished`). Each redis.call costs ~2 µs of Redis CPU beyond the command itself, so
-- a busy queue pays per call, not per job, for these.
local PUSH = {}
local FINISHED = {}

-- `cmd key list...` (or `cmd list...` when key is nil) in calls of at most 4000 list items
-- (Lua's unpack has a stack limit; an even count keeps score/member pairs together). Nothing
-- when the list is empty.
local function call_many(cmd, key, list)
  local n = #list
  local i = 1
  while i <= n do
    local j = math.min(n, i + 3999)
    if key then
      redis.call(cmd, key, unpack(list, i, j))
    else
      redis.call(cmd, unpack(list, i, j))
    end
    i = j + 1
  end
end

local function flush_batches()
  for kind, ids in pairs(PUSH) do
    call_many('RPUSH', P .. 'ready:' .. kind, ids)
  end
  PUSH = {}
  call_many('ZADD', P .. 'finished', FINISHED)
  FINISHED = {}
end

-- Idle workers block on the `wake` channel. A script notes the kinds worth waking for and
-- flush_wakes() publishes each once at the end. Why, strongest first: 'due' (a retry's due
-- time changed: sleepers must learn it), 'ready' (a job was made ready), 'slot' (a slot was
-- freed: only worth it if the kind has ready work). A claim in the same call marks the kinds
-- it left with nothing anyone could take (`NO_ROOM`: at its limit, or its ready list emptied),
-- and those get no 'ready' or 'slot' wake.
local WAKE = {}
local NO_ROOM = {}
local WHY = { slot = 1, ready = 2, due = 3 }

local function want_wake(kind, why)
  local cur = WAKE[kind]
  if not cur or WHY[why] > WHY[cur] then WAKE[kind] = why end
end

-- Ends every script that changes the queue: the gathered writes, then the wakes.
local function flush_wakes()
  flush_batches()
  for kind, why in pairs(WAKE) do
    if why == 'due' or (not NO_ROOM[kind] and (why == 'ready'
        or redis.call('LLEN', P .. 'ready:' .. kind) > 0)) then
      redis.call('PUBLISH', P .. 'wake', kind)
    end
  end
end

-- A job becomes claimable: at the front of its kind's list at once (a retry or a requeue goes
-- first), or at the back when flush_batches() runs (a new job, an account's next job).
local function make_ready(id, kind, front)
  want_wake(kind, 'ready')
  if front then
    redis.call('LPUSH', P .. 'ready:' .. kind, id)
  else
    PUSH[kind] = PUSH[kind] or {}
    table.insert(PUSH[kind], id)
  end
end

-- An account's FIFO holds `kind:id` entries (kinds and ids have no ':'), so that making the
-- next job ready needs no read of its hash. Entries written before this form are bare ids.
local function acct_entry(id, kind) return kind .. ':' .. id end

-- Remove a job from its account's FIFO; when it was the head, the next job of that account
-- becomes claimable. Only the head of an account's list is ever in a ready list, and every
-- other entry is a queued job (a cancel removes its entry at once).
local function advance_account(id, kind, account)
  if not account or account == '' then return end
  local key = P .. 'acct:' .. account
  local head = redis.call('LPOP', key)
  if not head then return end
  local entry = acct_entry(id, kind)
  if head ~= entry and head ~= id then
    -- Not the head (a queued job cancelled further back): put the head back, remove the job.
    redis.call('LPUSH', key, head)
    if redis.call('LREM', key, 1, entry) == 0 then redis.call('LREM', key, 1, id) end
    return
  end
  local nxt = redis.call('LINDEX', key, 0)
  if nxt then
    local k, nid = string.match(nxt, '^([^:]+):(.+)$')
    if k then
      make_ready(nid, k, false)
    else
      local st = redis.call('HMGET', jkey(nxt), 'status', 'kind')
      if st[1] == 'queued' then make_ready(nxt, st[2], false) end
    end
  end
end

-- Forget finished jobs: their hashes and log lists, and their `finished` entries.
local function forget(ids)
  local keys = {}
  for _, id in ipairs(ids) do
    table.insert(keys, jkey(id))
    table.insert(keys, lkey(id))
  end
  call_many('DEL', nil, keys)
  call_many('ZREM', P .. 'finished', ids)
end

-- Drop finished jobs older than the retention period (at most `most` per call: the reaper
-- runs every second), and the oldest beyond the count cap. When a store archives finished
-- jobs (the 'archived' key holds its watermark, a finish time in ms), the count cap drops only
-- jobs finished before the watermark: nothing leaves Redis unarchived for want of room.
local function trim_finished(most)
  forget(redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', NOW - RETENTION, 'LIMIT', 0, most))
  local over = redis.call('ZCARD', P .. 'finished') - MAX_FINISHED
  if over > 0 then
    local upto = redis.call('GET', P .. 'archived')
    if upto then
      forget(redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', '(' .. upto, 'LIMIT', 0, over))
    else
      forget(redis.call('ZRANGE', P .. 'finished', 0, over - 1))
    end
  end
end

-- Move a job to a final state. `fields` is a flat list of extra hash fields. Its `finished`
-- entry is written by flush_batches(); the reaper forgets it after the retention period or
-- beyond the count cap (trim_finished), not a key TTL: a PEXPIRE per job would cost Redis
-- more than a DEL of hundreds of keys once a second.
local function finish(id, kind, status, account, fields)
  redis.call('HSET', jkey(id), 'status', status, 'finished_at', NOW, 'token', '', unpack(fields))
  table.insert(FINISHED, NOW)
  table.insert(FINISHED, id)
  advance_account(id, kind, account)
end

local function complete_event(id, success, msg, account, reseller)
  local d
  if success then
    d = cjson.encode({ success = true, summary = msg })
  else
    d = cjson.encode({ success = false, error = msg })
  end
  emit(id, 'complete', d, account, reseller)
end

local function status_event(id, status, extra, account, reseller)
  local t = extra or {}
  t.status = status
  emit(id, 'status', cjson.encode(t), account, reseller)
end

