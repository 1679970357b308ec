SELECT NOT EXISTS (
           SELECT 1 FROM apalis.jobs
           WHERE job_type = $2 AND idempotency_key LIKE $3
             AND status IN ('Pending', 'Queued', 'Running'))
   AND NOT EXISTS (
           SELECT 1 FROM dmf.leases WHERE migration = $1 AND expires_at >= now())
