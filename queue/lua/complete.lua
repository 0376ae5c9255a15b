-- Record outcomes (complete_fn.lua): ARGV[5] count, then 6 fields per job.
local out = complete_jobs(5)
flush_wakes()
return out
