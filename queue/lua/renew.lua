-- Renew the leases of a worker's running jobs. ARGV[5] lease (ms), then pairs (id, token).
-- Returns { positions (1-based pair numbers) of attempts whose cancel was requested,
--           positions of attempts whose lease moved on (stop working on them) }.
local lease = tonumber(ARGV[5])
local cancelled, lost = {}, {}
for i = 6, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local j = redis.call('HMGET', jkey(id), 'status', 'token', 'cancel')
  if j[1] == 'running' and j[2] == token then
    redis.call('ZADD', P .. 'leases', 'XX', NOW + lease, id)
    if j[3] == '1' then table.insert(cancelled, (i - 4) / 2) end
  else
    table.insert(lost, (i - 4) / 2)
  end
end
return { cancelled, lost }
