-- Claim up to N jobs for a worker, honouring pause, per-kind limits and per-account order.
-- From ARGV[b]: worker id, lease (ms), N, then pairs (kind, default limit) to the end.
-- Returns { next_delayed_due_ms or -1, paused 0/1, redis now (ms), then 7 fields per claimed job }.
-- Wakes for jobs it made ready are left to the caller's flush_wakes().
local function claim_jobs(b)
  local worker, lease, want = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  -- Retries whose backoff has elapsed go back to the front of their ready list.
  local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', NOW, 'LIMIT', 0, 500)
  -- Walk them latest-due first, each pushed to the front, so the earliest due ends up first.
  for i = #due, 1, -1 do
    local id = due[i]
    redis.call('ZREM', P .. 'delayed', id)
    local kind = redis.call('HGET', jkey(id), 'kind')
    if kind then
      redis.call('HSET', jkey(id), 'status', 'queued')
      redis.call('HDEL', jkey(id), 'run_at')
      make_ready(id, kind, true)
    end
  end
  local nxt = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
  local out = { tonumber(nxt[2] or '-1'), 0, NOW }
  if redis.call('EXISTS', P .. 'paused') == 1 then
    out[2] = 1
    return out
  end
  local taken = 0
  for i = b + 3, #ARGV, 2 do
    if taken >= want then break end
    local kind = ARGV[i]
    local limit = tonumber(redis.call('HGET', P .. 'limits', kind) or ARGV[i + 1])
    local running = tonumber(redis.call('HGET', P .. 'running', kind) or '0')
    local took = 0
    while running < limit and taken < want do
      local id = redis.call('LPOP', P .. 'ready:' .. kind)
      if not id then break end
      local j = redis.call('HMGET', jkey(id), 'status', 'payload', 'max_attempts', 'account',
        'reseller', 'attempts')
      if j[1] == 'queued' then
        local attempts = tonumber(j[6] or '0') + 1
        -- unique per attempt even if attempts restart (rerun) or go back (requeue)
        local token = worker .. '/' .. attempts .. '/' .. NOW
        redis.call('HSET', jkey(id), 'status', 'running', 'started_at', NOW, 'token', token,
          'worker', worker, 'attempts', attempts)
        redis.call('ZADD', P .. 'leases', NOW + lease, id)
        redis.call('ZREM', KEYS[1], id)
        running = running + 1
        taken = taken + 1
        took = took + 1
        status_event(id, 'running', { attempt = attempts }, j[4], j[5])
        table.insert(out, id)
        table.insert(out, kind)
        table.insert(out, j[2])
        table.insert(out, attempts)
        table.insert(out, j[3])
        table.insert(out, j[4] or '')
        table.insert(out, token)
      end
    end
    if took > 0 then redis.call('HINCRBY', P .. 'running', kind, took) end
  end
  return out
end
