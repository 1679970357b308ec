-- Signal every client session on this database to end, except ours and the ones held by live
-- proxies ($1); returns the pids signalled. The caller waits until they are gone (a session killed
-- half-way through COMMIT may still commit; it must do so before the final marker is written).
-- Replication senders and background workers (the apply workers of a subscription) are not client
-- backends and are spared.
SELECT coalesce(array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)), '{}') AS ended
FROM pg_stat_activity
WHERE datname = current_database()
  AND backend_type = 'client backend'
  AND pid <> pg_backend_pid()
  AND NOT (pid = ANY ($1::int[]))
