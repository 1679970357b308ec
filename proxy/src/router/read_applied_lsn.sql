-- The primary's WAL position the read endpoint has applied: replay position on a physical
-- standby, the newest remote commit applied by a logical subscription otherwise.
SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
            ELSE (SELECT max(remote_lsn) FROM pg_replication_origin_status) END::text
