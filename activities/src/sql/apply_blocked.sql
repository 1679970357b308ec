-- What the subscription's apply worker ($1: the subscription) waits for on the target, when it
-- waits for a lock: how long, on what, and who holds it (pid, user, application, state; not its
-- query, which may hold a secret).
SELECT coalesce(extract(epoch FROM now() - w.state_change), 0)::float8 AS waited_s,
       b.pid AS holder_pid,
       coalesce(b.usename::text, '') AS holder_user,
       coalesce(b.application_name, '') AS holder_application,
       coalesce(b.state, '') AS holder_state,
       coalesce(l.relation::regclass::text, '') AS relation
FROM pg_stat_subscription s
JOIN pg_stat_activity w ON w.pid = s.pid
LEFT JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS h(pid) ON true
LEFT JOIN pg_stat_activity b ON b.pid = h.pid
LEFT JOIN pg_locks l ON l.pid = w.pid AND NOT l.granted
WHERE s.subname = $1 AND s.relid IS NULL AND w.wait_event_type = 'Lock'
LIMIT 1
