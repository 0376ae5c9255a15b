-- Record outcomes (complete_fn.lua): ARGV[5] count, then 6 fields per job.
local out, freed = complete_jobs(5)
for kind, d in pairs(freed) do redis.call('HINCRBY', P .. 'running', kind, -d) end
flush_wakes()
return out
