-- The primary's WAL position a logical subscriber has applied: the newest remote commit of its
-- replication origins. Readable by superusers, or a role granted SELECT on the view.
SELECT max(remote_lsn)::text FROM pg_replication_origin_status
