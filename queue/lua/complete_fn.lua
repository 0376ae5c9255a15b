-- Record how attempts ended, several at once. Only the current lease holder (token) may.
-- ARGV[b] count, then per job 6 fields: id, token, outcome (succeeded | failed | retry |
-- cancelled | requeue), text (error text), retry delay (ms), complete-event JSON (succeeded:
-- built by the caller with the result, so the result is never parsed here).
-- Returns one status per job (the new status, or 'stale' when the caller no longer owned it),
-- and the slots freed per kind (kind → count), which the caller takes off the `running` hash
-- (claim_jobs nets them against what it claims). Wakes (a freed slot, a retry) are left to
-- the caller's flush_wakes().
local function complete_jobs(b)
  local n = tonumber(ARGV[b])
  local out = {}
  local dec = {}
  local released = {}
  for i = 0, n - 1 do
    local a = b + 1 + i * 6
    local id, token, outcome, text = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
    local delay, okjson = tonumber(ARGV[a + 4]), ARGV[a + 5]
    local j = redis.call('HMGET', jkey(id), 'status', 'token', 'kind', 'account', 'attempts',
      'max_attempts', 'cancel', 'reseller')
    if j[1] ~= 'running' or j[2] ~= token then
      table.insert(out, 'stale')
    else
      local kind, account, reseller = j[3], j[4] or '', j[8] or ''
      local attempts, max_attempts = tonumber(j[5]), tonumber(j[6])
      table.insert(released, id)
      dec[kind] = (dec[kind] or 0) + 1
      -- A cancel requested meanwhile wins over trying again (after a failure or a shutdown).
      if (outcome == 'retry' or outcome == 'requeue') and j[7] == '1' then
        outcome = 'cancelled'; text = 'cancelled by request'
      end
      if outcome == 'retry' and attempts >= max_attempts then outcome = 'failed' end
      local final
      if outcome == 'succeeded' then
        finish(id, kind, 'succeeded', account, { 'result', text, 'percent', 100, 'eta', 0 })
        emit(id, 'complete', okjson, account, reseller)
        final = 'succeeded'
      elseif outcome == 'failed' or outcome == 'cancelled' then
        finish(id, kind, outcome, account, { 'error', text })
        complete_event(id, false, text, account, reseller)
        final = outcome
      elseif outcome == 'retry' then
        local at = NOW + delay
        redis.call('HSET', jkey(id), 'status', 'retrying', 'error', text, 'run_at', at, 'token', '')
        redis.call('ZADD', P .. 'delayed', at, id)
        redis.call('ZADD', KEYS[1], NOW, id)
        status_event(id, 'retrying', { error = text, run_at = at, attempt = attempts }, account, reseller)
        want_wake(kind, 'due')
        final = 'retrying'
      else -- requeue after shutdown: does not use an attempt, never refused by the bound
        redis.call('HSET', jkey(id), 'status', 'queued', 'attempts', attempts - 1, 'token', '')
        make_ready(id, kind, true)
        redis.call('ZADD', KEYS[1], NOW, id)
        status_event(id, 'queued', { reason = 'worker shutdown' }, account, reseller)
        final = 'queued'
      end
      want_wake(kind, 'slot') -- its slot is free
      table.insert(out, final)
    end
  end
  call_many('ZREM', P .. 'leases', released)
  return out, dec
end
