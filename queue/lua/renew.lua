-- Renew the leases of a worker's running jobs. ARGV[5] lease (ms), then pairs (id, token).
-- Returns { cancel-requested ids, lost ids } (lost: the lease moved on, stop working on it).
local lease = tonumber(ARGV[5])
local cancelled, lost = {}, {}
for i = 6, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local j = redis.call('HMGET', jkey(id), 'status', 'token', 'cancel')
  if j[1] == 'running' and j[2] == token then
    redis.call('ZADD', P .. 'leases', 'XX', NOW + lease, id)
    if j[3] == '1' then table.insert(cancelled, id) end
  else
    table.insert(lost, id)
  end
end
return { cancelled, lost }
