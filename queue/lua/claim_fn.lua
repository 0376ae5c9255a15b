-- Claim up to N jobs for a worker, honouring pause, per-kind limits and per-account order.
-- From ARGV[b]: worker id, lease (ms), N, then pairs (kind, default limit) to the end.
-- `freed` (kind → slots) is what completions earlier in the same call freed and have not yet
-- taken off the `running` hash: the claim nets them against what it takes, so a slot freed and
-- refilled costs no write at all. The caller passes {} when there is none.
-- Returns { next_delayed_due_ms or -1, paused 0/1, redis now (ms), then 7 fields per claimed job }.
-- Wakes for jobs it made ready are left to the caller's flush_wakes().
local function claim_jobs(b, freed)
  local worker, lease, want = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  -- Retries whose backoff has elapsed go back to the front of their ready list.
  local nxt = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
  if nxt[2] and tonumber(nxt[2]) <= NOW then
    local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', NOW, 'LIMIT', 0, 500)
    call_many('ZREM', P .. 'delayed', due)
    -- Walk them latest-due first, each pushed to the front, so the earliest due ends up first.
    for i = #due, 1, -1 do
      local id = due[i]
      local kind = redis.call('HGET', jkey(id), 'kind')
      if kind then
        redis.call('HSET', jkey(id), 'status', 'queued')
        redis.call('HDEL', jkey(id), 'run_at')
        make_ready(id, kind, true)
      end
    end
    nxt = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
  end
  local out = { tonumber(nxt[2] or '-1'), 0, NOW }
  local function settle(kind, took)
    local d = took - (freed[kind] or 0)
    if d ~= 0 then redis.call('HINCRBY', P .. 'running', kind, d) end
    freed[kind] = nil
  end
  local kinds = {}
  for i = b + 3, #ARGV, 2 do table.insert(kinds, ARGV[i]) end
  if redis.call('EXISTS', P .. 'paused') == 1 then out[2] = 1 end
  if out[2] == 1 or #kinds == 0 then
    for kind, _ in pairs(freed) do settle(kind, 0) end
    return out
  end
  local taken = 0
  local leases, claimed = {}, {}
  -- Every kind's limit and running count in two reads, however many kinds the worker has.
  local limits = redis.call('HMGET', P .. 'limits', unpack(kinds))
  local counts = redis.call('HMGET', P .. 'running', unpack(kinds))
  for n, kind in ipairs(kinds) do
    local took = 0
    if taken < want then
      local limit = tonumber(limits[n] or ARGV[b + 2 + n * 2])
      local running = tonumber(counts[n] or '0') - (freed[kind] or 0)
      local room = math.min(limit - running, want - taken)
      local ids = false
      if room > 0 then ids = redis.call('LPOP', P .. 'ready:' .. kind, room) end
      if ids then
        for _, id in ipairs(ids) do
          local j = redis.call('HMGET', jkey(id), 'status', 'payload', 'max_attempts', 'account',
            'reseller', 'attempts')
          if j[1] == 'queued' then
            local attempts = tonumber(j[6] or '0') + 1
            -- unique per attempt even if attempts restart (rerun) or go back (requeue)
            local token = worker .. '/' .. attempts .. '/' .. NOW
            redis.call('HSET', jkey(id), 'status', 'running', 'started_at', NOW, 'token', token,
              'worker', worker, 'attempts', attempts)
            table.insert(leases, NOW + lease)
            table.insert(leases, id)
            table.insert(claimed, id)
            took = took + 1
            table.insert(out, id)
            table.insert(out, kind)
            table.insert(out, j[2])
            table.insert(out, attempts)
            table.insert(out, j[3])
            table.insert(out, j[4] or '')
            table.insert(out, token)
          end
        end
      end
      taken = taken + took
      -- Nobody else can take more of this kind now: it is at its limit, or its list is empty.
      if running + took >= limit or not ids or #ids < room then NO_ROOM[kind] = true end
    end
    settle(kind, took)
  end
  -- Kinds freed that this worker does not claim.
  for kind, _ in pairs(freed) do settle(kind, 0) end
  call_many('ZADD', P .. 'leases', leases)
  call_many('ZREM', KEYS[1], claimed)
  return out
end
