-- Signal this database's sessions named $1 (the connections a worker keeps between a migration's
-- watch ticks, `activities::conns`), other than ours, to end; returns their pids. The signal is
-- an aggregate's filter, so it runs only on the rows the conditions chose (in a WHERE clause next
-- to them it could be evaluated first, on every session, ours included).
WITH kept AS (
    SELECT pid
    FROM pg_stat_activity
    WHERE datname = current_database()
      AND application_name = $1
      AND pid <> pg_backend_pid()
)
SELECT coalesce(array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)), '{}')
FROM kept
