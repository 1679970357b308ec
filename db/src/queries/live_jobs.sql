SELECT count(*)
FROM apalis.jobs
WHERE job_type = $1
  AND idempotency_key LIKE $2
  AND status IN ('Pending', 'Queued', 'Running')
