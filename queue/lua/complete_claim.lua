-- Record outcomes and claim the next jobs in one call (claim-on-complete): the slots the
-- recorded attempts free are filled in the same round trip. ARGV[5] count, 6 fields per job
-- (complete_fn.lua), then the claim's arguments (claim_fn.lua). The claim runs after the
-- completions, so it sees their freed per-kind slots (netted: a slot freed and refilled
-- writes nothing) and the next job of each account they advanced; wakes go out at the end,
-- only for work this claim left behind that someone else could take.
-- Returns { statuses (as complete), claim reply (as claim) }.
local done, freed = complete_jobs(5)
flush_batches()
local claimed = claim_jobs(6 + tonumber(ARGV[5]) * 6, freed)
flush_wakes()
return { done, claimed }
