-- Migrations that failed before the flip, longer ago than $2 seconds, whose replication slots
-- have not been dropped yet ($1: the phases before the flip).
 WHERE m.phase = 'failed'
   AND m.failed_phase = ANY ($1)
   AND m.updated_at < now() - make_interval(secs => $2)
   AND NOT (m.state ? 'slots_dropped')
