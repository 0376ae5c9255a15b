-- The queue at a glance. Returns { pending, paused, running pairs, limit pairs, pending-by-kind pairs }.
local pending = redis.call('ZRANGE', KEYS[1], 0, -1)
local by_kind = {}
for _, id in ipairs(pending) do
  local k = redis.call('HGET', jkey(id), 'kind')
  if k then by_kind[k] = (by_kind[k] or 0) + 1 end
end
local bk = {}
for k, v in pairs(by_kind) do table.insert(bk, k); table.insert(bk, v) end
return { #pending, redis.call('EXISTS', P .. 'paused'), redis.call('HGETALL', P .. 'running'),
  redis.call('HGETALL', P .. 'limits'), bk }
