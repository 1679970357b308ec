 WHERE m.phase NOT IN ('pending', 'aborted', 'failed', 'completed', 'rolled_back')
   AND NOT m.paused
   AND m.updated_at < now() - make_interval(secs => $2)
   AND NOT EXISTS (
           SELECT 1 FROM apalis.jobs j
           WHERE j.job_type = $1
             AND j.idempotency_key LIKE m.id::text || '/%'
             AND j.status IN ('Pending', 'Queued'))
   AND NOT EXISTS (
           SELECT 1 FROM dmf.leases l WHERE l.migration = m.id AND l.expires_at >= now())
