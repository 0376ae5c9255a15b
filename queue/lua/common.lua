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

-- Idle workers block on the `wake` channel. A script notes the kinds worth waking for and
-- flush_wakes() publishes each once at the end: `true` = always (a job was made ready, or a
-- retry's due time changed), `false` = only if that kind has ready work (a slot was freed).
local WAKE = {}

local function want_wake(kind, always)
  if always then
    WAKE[kind] = true
  elseif WAKE[kind] == nil then
    WAKE[kind] = false
  end
end

local function flush_wakes()
  for kind, always in pairs(WAKE) do
    if always or redis.call('LLEN', P .. 'ready:' .. kind) > 0 then
      redis.call('PUBLISH', P .. 'wake', kind)
    end
  end
end

local function make_ready(id, kind, front)
  want_wake(kind, true)
  if front then
    redis.call('LPUSH', P .. 'ready:' .. kind, id)
  else
    redis.call('RPUSH', P .. 'ready:' .. kind, id)
  end
end

-- Remove a job from its account's FIFO; when it was the head, the next job of that account
-- becomes claimable. Only the head of an account's list is ever in a ready list.
local function advance_account(id, account)
  if not account or account == '' then return end
  local key = P .. 'acct:' .. account
  local head = redis.call('LPOP', key)
  if not head then return end
  if head ~= id then
    -- Not the head (a queued job cancelled further back): put the head back, remove the job.
    redis.call('LPUSH', key, head)
    redis.call('LREM', key, 1, id)
    return
  end
  local nxt = redis.call('LINDEX', key, 0)
  if nxt then
    local st = redis.call('HMGET', jkey(nxt), 'status', 'kind')
    if st[1] == 'queued' then make_ready(nxt, st[2], false) end
  end
end

-- Drop the oldest finished jobs beyond the count cap (the age cap is the keys' TTL). When a
-- store archives finished jobs (the 'archived' key holds its watermark, a finish time in ms),
-- only jobs finished before the watermark are dropped: nothing leaves Redis unarchived.
local function trim_finished()
  local over = redis.call('ZCARD', P .. 'finished') - MAX_FINISHED
  if over > 0 then
    local upto = redis.call('GET', P .. 'archived')
    local old
    if upto then
      old = redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', '(' .. upto, 'LIMIT', 0, over)
      if #old > 0 then redis.call('ZREM', P .. 'finished', unpack(old)) end
      for i = 1, #old do redis.call('DEL', jkey(old[i]), lkey(old[i])) end
    else
      old = redis.call('ZPOPMIN', P .. 'finished', over)
      for i = 1, #old, 2 do
        redis.call('DEL', jkey(old[i]), lkey(old[i]))
      end
    end
  end
end

-- Move a job to a final state. `fields` is a flat list of extra hash fields; `logged` false
-- when the job is known to have no log list. The count cap is applied by the reaper.
local function finish(id, status, account, fields, logged)
  redis.call('HSET', jkey(id), 'status', status, 'finished_at', NOW, 'token', '', unpack(fields))
  redis.call('ZADD', P .. 'finished', NOW, id)
  redis.call('PEXPIRE', jkey(id), RETENTION)
  if logged ~= false then redis.call('PEXPIRE', lkey(id), RETENTION) end
  advance_account(id, account)
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

