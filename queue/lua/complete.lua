-- Record the outcome of a claimed job. Only the current lease holder (token) may do this.
-- ARGV[5] id, ARGV[6] token, ARGV[7] outcome: succeeded | failed | retry | cancelled | requeue,
-- ARGV[8] result JSON (succeeded) or error text, ARGV[9] retry delay (ms, for retry).
-- Returns { 'ok', final status } or { 'stale', current status }.
local id, token, outcome, text, delay = ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local j = redis.call('HMGET', jkey(id), 'status', 'token', 'kind', 'account', 'attempts', 'max_attempts', 'cancel', 'reseller')
if j[1] ~= 'running' or j[2] ~= token then return { 'stale', j[1] or 'missing' } end
local kind, account, reseller = j[3], j[4] or '', j[8] or ''
local attempts, max_attempts = tonumber(j[5]), tonumber(j[6])
redis.call('ZREM', P .. 'leases', id)
redis.call('HINCRBY', P .. 'running', kind, -1)
if outcome == 'retry' and j[7] == '1' then outcome = 'cancelled'; text = 'cancelled' end
if outcome == 'retry' and attempts >= max_attempts then outcome = 'failed' end
local final
if outcome == 'succeeded' then
  finish(id, 'succeeded', account, { 'result', text, 'percent', 100, 'eta', 0 })
  local summary = cjson.decode(text)
  emit(id, 'complete', cjson.encode({ success = true, summary = summary }), account, reseller)
  final = 'succeeded'
elseif outcome == 'failed' then
  finish(id, 'failed', account, { 'error', text })
  complete_event(id, false, text, account, reseller)
  final = 'failed'
elseif outcome == 'cancelled' then
  finish(id, 'cancelled', account, { 'error', text })
  complete_event(id, false, text, account, reseller)
  final = 'cancelled'
elseif outcome == 'retry' then
  local at = NOW + delay
  redis.call('HSET', jkey(id), 'status', 'retrying', 'error', text, 'run_at', at)
  redis.call('HDEL', jkey(id), 'token')
  redis.call('ZADD', P .. 'delayed', at, id)
  redis.call('ZADD', KEYS[1], NOW, id)
  status_event(id, 'retrying', { error = text, run_at = at, attempt = attempts }, account, reseller)
  final = 'retrying'
else -- requeue after shutdown: does not use an attempt, never refused by the bound
  redis.call('HSET', jkey(id), 'status', 'queued', 'attempts', attempts - 1)
  redis.call('HDEL', jkey(id), 'token')
  make_ready(id, kind, true)
  redis.call('ZADD', KEYS[1], NOW, id)
  status_event(id, 'queued', { reason = 'worker shutdown' }, account, reseller)
  final = 'queued'
end
if final == 'retrying' then
  -- idle workers learn the new due time from their next claim
  redis.call('PUBLISH', P .. 'wake', kind)
else
  wake(kind)
end
return { 'ok', final }
