-- Return jobs whose lease expired (their worker died or hung) to the queue, or fail them after
-- max_attempts; forget finished jobs older than the retention period.
-- ARGV[5] max jobs per call. Returns the number of expired leases handled.
local expired = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[5]))
for _, id in ipairs(expired) do
  redis.call('ZREM', P .. 'leases', id)
  local j = redis.call('HMGET', jkey(id), 'status', 'kind', 'account', 'attempts', 'max_attempts', 'cancel', 'reseller')
  if j[1] == 'running' then
    redis.call('HINCRBY', P .. 'running', j[2], -1)
    want_wake(j[2], 'slot') -- its slot is free
    local attempts, max_attempts = tonumber(j[4]), tonumber(j[5])
    if j[6] == '1' then
      finish(id, j[2], 'cancelled', j[3] or '', { 'error', 'cancelled (worker lost)' })
      complete_event(id, false, 'cancelled (worker lost)', j[3], j[7])
    elseif attempts >= max_attempts then
      local msg = 'lease expired: worker lost during attempt ' .. attempts .. ' of ' .. max_attempts
      finish(id, j[2], 'failed', j[3] or '', { 'error', msg })
      complete_event(id, false, msg, j[3], j[7])
    else
      redis.call('HSET', jkey(id), 'status', 'queued', 'error', 'lease expired: worker lost', 'token', '')
      make_ready(id, j[2], true)
      redis.call('ZADD', KEYS[1], NOW, id)
      status_event(id, 'queued', { reason = 'lease expired' }, j[3], j[7])
    end
  end
end
flush_batches()
trim_finished(2000)
flush_wakes()
return #expired
