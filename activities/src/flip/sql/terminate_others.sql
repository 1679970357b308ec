-- End every client session on this database except ours and the ones held by live proxies ($1),
-- waiting up to 5 s for each to be gone (a session killed half-way through COMMIT may still
-- commit; it must do so before the final marker is written). Replication senders and background
-- workers (the apply workers of a subscription) are not client backends and are spared.
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) AS ended
FROM pg_stat_activity
WHERE datname = current_database()
  AND backend_type = 'client backend'
  AND pid <> pg_backend_pid()
  AND NOT (pid = ANY ($1::int[]))
