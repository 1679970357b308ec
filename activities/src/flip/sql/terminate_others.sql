-- Signal every client session on this database to end, except ours and the ones held by live
-- proxies ($1); returns the pids signalled, and the sessions our role cannot end (a superuser's,
-- when our role is not one) as "user (pid)". The caller waits until the ended ones are gone (a
-- session killed half-way through COMMIT may still commit; it must do so before the final marker
-- is written). Replication senders and background workers (the apply workers of a subscription)
-- are not client backends and are spared. Sessions of superusers and of our own role are ended
-- like any other.
WITH others AS (
    SELECT a.pid, a.usename, coalesce(r.rolsuper, false) AS superuser
    FROM pg_stat_activity a
    LEFT JOIN pg_roles r ON r.oid = a.usesysid
    WHERE a.datname = current_database()
      AND a.backend_type = 'client backend'
      AND a.pid <> pg_backend_pid()
      AND NOT (a.pid = ANY ($1::int[]))
), me AS (
    SELECT rolsuper FROM pg_roles WHERE rolname = current_user
)
SELECT coalesce(array_agg(pid) FILTER (WHERE (NOT superuser OR (SELECT rolsuper FROM me)) AND pg_terminate_backend(pid)), '{}') AS ended,
       coalesce(array_agg(usename || ' (' || pid || ')') FILTER (WHERE superuser AND NOT (SELECT rolsuper FROM me)), '{}') AS unendable
FROM others
