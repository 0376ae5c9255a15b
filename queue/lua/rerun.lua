-- Run a failed or cancelled job again, as new work: the bound applies and it joins the end of
-- its account's line. ARGV[5] id, ARGV[6] max_pending.
-- Returns { 'ok' } | { 'full', pending, retry_after } | { 'conflict', status } | { 'not_found' }.
local id, max_pending = ARGV[5], tonumber(ARGV[6])
local j = redis.call('HMGET', jkey(id), 'status', 'kind', 'account', 'reseller')
if not j[1] then return { 'not_found' } end
if j[1] ~= 'failed' and j[1] ~= 'cancelled' then return { 'conflict', j[1] } end
local pending = redis.call('ZCARD', KEYS[1])
if pending + 1 > max_pending then return { 'full', pending, 30 } end
redis.call('HSET', jkey(id), 'status', 'queued', 'attempts', 0, 'percent', 0, 'stage', '', 'eta', '',
  'speed', '', 'done', '', 'total', '')
redis.call('HDEL', jkey(id), 'error', 'finished_at', 'started_at', 'cancel', 'result', 'token')
redis.call('ZREM', P .. 'finished', id)
redis.call('ZADD', KEYS[1], NOW, id)
local account = j[3] or ''
if account ~= '' then
  if redis.call('RPUSH', P .. 'acct:' .. account, acct_entry(id, j[2])) == 1 then make_ready(id, j[2], false) end
else
  make_ready(id, j[2], false)
end
status_event(id, 'queued', { reason = 'retry requested' }, account, j[4])
flush_wakes()
return { 'ok' }
