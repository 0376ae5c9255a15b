-- Cancel a job. Queued and retrying jobs end at once; a running job is flagged and its owner
-- told over pub/sub (it also learns at its next lease renewal or progress write).
-- ARGV[5] id. Returns { outcome, status } with outcome: cancelled | cancelling | finished | not_found.
local id = ARGV[5]
local j = redis.call('HMGET', jkey(id), 'status', 'kind', 'account', 'reseller')
local st = j[1]
if not st then return { 'not_found', '' } end
if st == 'queued' or st == 'retrying' then
  redis.call('LREM', P .. 'ready:' .. j[2], 1, id)
  redis.call('ZREM', P .. 'delayed', id)
  redis.call('HDEL', jkey(id), 'run_at')
  redis.call('ZREM', KEYS[1], id)
  finish(id, j[2], 'cancelled', j[3] or '', { 'error', 'cancelled before it ran' })
  complete_event(id, false, 'cancelled', j[3], j[4])
  flush_wakes()
  return { 'cancelled', 'cancelled' }
elseif st == 'running' then
  redis.call('HSET', jkey(id), 'cancel', 1)
  redis.call('PUBLISH', P .. 'cancel', id)
  status_event(id, 'cancelling', nil, j[3], j[4])
  return { 'cancelling', 'running' }
end
return { 'finished', st }
