-- Store a job's latest progress, renew its lease, keep the last 100 log lines and append events.
-- ARGV[5] id, ARGV[6] token, ARGV[7] lease (ms), ARGV[8] event type ('' for none),
-- ARGV[9] event data JSON, ARGV[10] attempt to announce as running first (0: none; see
-- ANNOUNCE_AFTER in progress.rs), ARGV[11] number of hash field pairs, then the pairs, then
-- log lines. Returns { owned 0/1, cancel requested 0/1 }.
local id, token, lease = ARGV[5], ARGV[6], tonumber(ARGV[7])
local j = redis.call('HMGET', jkey(id), 'status', 'token', 'cancel', 'account', 'reseller')
if j[1] ~= 'running' or j[2] ~= token then return { 0, 0 } end
redis.call('ZADD', P .. 'leases', 'XX', NOW + lease, id)
local announce = tonumber(ARGV[10])
if announce > 0 then status_event(id, 'running', { attempt = announce }, j[4], j[5]) end
local npairs = tonumber(ARGV[11])
local first_log = 12 + npairs * 2
local f = {}
for i = 12, first_log - 1 do table.insert(f, ARGV[i]) end
if #f > 0 then redis.call('HSET', jkey(id), unpack(f)) end
if ARGV[8] ~= '' then emit(id, ARGV[8], ARGV[9], j[4], j[5]) end
for i = first_log, #ARGV do
  redis.call('RPUSH', lkey(id), ARGV[i])
  emit(id, 'log', cjson.encode({ line = ARGV[i] }), j[4], j[5])
end
if #ARGV >= first_log then redis.call('LTRIM', lkey(id), -100, -1) end
local c = 0
if j[3] == '1' then c = 1 end
return { 1, c }
