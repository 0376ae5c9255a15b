-- Claim jobs (claim_fn.lua), ARGV[5] onwards: worker id, lease (ms), N, (kind, limit) pairs.
return claim_jobs(5, {})
