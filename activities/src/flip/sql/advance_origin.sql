-- Move a (disabled, never started) subscription's replication origin to $2: its apply worker asks
-- the publisher to start there, and logical decoding skips every transaction committed before it.
SELECT pg_replication_origin_advance('pg_' || s.oid, $2::text::pg_lsn)
FROM pg_subscription s
WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
