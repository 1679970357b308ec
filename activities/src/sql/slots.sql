-- The named replication slots on this server: whether a consumer uses them, the WAL each keeps
-- (from its restart position), how far its consumer is behind, and wal_status (reserved,
-- extended, unreserved: about to lose WAL it needs, lost).
SELECT slot_name::text AS name,
       active,
       wal_status,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 AS retained,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 AS behind
FROM pg_replication_slots
WHERE slot_name = ANY ($1)
ORDER BY 1
