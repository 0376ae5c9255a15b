-- Enqueue a batch, all or nothing against the bound.
-- ARGV[5] max_pending, ARGV[6] idempotency TTL (ms), ARGV[7] count,
-- then per job 7 fields: id, kind, payload, account, reseller, max_attempts, idem_key.
local max_pending = tonumber(ARGV[5])
local idem_ttl = tonumber(ARGV[6])
local n = tonumber(ARGV[7])
local out = { 'ok' }
-- First pass: resolve idempotency keys so duplicates never count against the bound.
-- A key repeated inside one batch maps to the batch's first job with that key.
local fresh = 0
local existing = {}
local first_in_batch = {}
for i = 0, n - 1 do
  local b = 8 + i * 7
  local key = ARGV[b + 6]
  if key ~= '' then
    local id = redis.call('GET', P .. 'idem:' .. key)
    if id and redis.call('EXISTS', jkey(id)) == 1 then
      existing[i] = id
    elseif first_in_batch[key] then
      existing[i] = ARGV[8 + first_in_batch[key] * 7]
    else
      first_in_batch[key] = i
      fresh = fresh + 1
    end
  else
    fresh = fresh + 1
  end
end
local pending = redis.call('ZCARD', KEYS[1])
if fresh > 0 and pending + fresh > max_pending then
  -- Estimate when room frees up from the completions of the last 10 s.
  local done = redis.call('ZCOUNT', P .. 'finished', NOW - 10000, '+inf')
  local need = pending + fresh - max_pending
  local retry = 30
  if done > 0 then retry = math.ceil(need / (done / 10)) end
  if retry < 1 then retry = 1 end
  if retry > 300 then retry = 300 end
  return { 'full', pending, retry }
end
local pend = {}
for i = 0, n - 1 do
  local b = 8 + i * 7
  if existing[i] then
    table.insert(out, existing[i])
    table.insert(out, 1)
  else
    local id, kind, payload, account = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
    local reseller, max_attempts, key = ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]
    redis.call('HSET', jkey(id), 'id', id, 'kind', kind, 'payload', payload, 'account', account,
      'reseller', reseller, 'status', 'queued', 'attempts', 0, 'max_attempts', max_attempts,
      'created_at', NOW, 'idem', key)
    table.insert(pend, NOW)
    table.insert(pend, id)
    if key ~= '' then redis.call('SET', P .. 'idem:' .. key, id, 'PX', idem_ttl) end
    if account ~= '' then
      if redis.call('RPUSH', P .. 'acct:' .. account, acct_entry(id, kind)) == 1 then make_ready(id, kind, false) end
    else
      make_ready(id, kind, false)
    end
    status_event(id, 'queued', nil, account, reseller)
    table.insert(out, id)
    table.insert(out, 0)
  end
end
call_many('ZADD', KEYS[1], pend)
flush_wakes()
return out
