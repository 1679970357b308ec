-- The primary's WAL position a physical standby has replayed (any role may read it), or NULL
-- when the endpoint is not in recovery.
SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text END
