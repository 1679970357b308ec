-- Signal this database's sessions named $1 (the connections a worker keeps between a migration's
-- watch ticks, `activities::conns`) to end, other than ours; returns their pids. Only sessions of
-- our own login (the ones dmf kept log in as it): ending another role's may be refused, and an
-- error here would fail the flip's guard and the cleanup every time. The signal is an aggregate's
-- filter, so it runs only on the rows the conditions chose (in a WHERE clause next to them it
-- could be evaluated first, on every session, ours included).
WITH kept AS (
    SELECT pid
    FROM pg_stat_activity
    WHERE datname = current_database()
      AND application_name = $1
      AND usename = session_user
      AND pid <> pg_backend_pid()
)
SELECT coalesce(array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)), '{}')
FROM kept
