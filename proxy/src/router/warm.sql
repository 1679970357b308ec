-- Warm a backend opened ahead of a move: open the database's busiest tables and their indexes
-- (pg_relation_size opens each one, which builds its relation cache entry), so that the first
-- transactions on the new primary do not all rebuild their catalog caches at once. Runs in one
-- implicit transaction: the local settings end with it, and a lock it cannot take at once (DDL
-- in progress) makes it give up rather than wait.
SELECT set_config('lock_timeout', '20ms', true), set_config('statement_timeout', '2s', true);
SELECT count(pg_relation_size(i.indexrelid)) + count(DISTINCT pg_relation_size(t.relid))
FROM (
    SELECT relid FROM pg_stat_user_tables
    ORDER BY coalesce(seq_scan, 0) + coalesce(idx_scan, 0) + n_tup_ins + n_tup_upd + n_tup_del DESC
    LIMIT 200
) t
LEFT JOIN pg_index i ON i.indrelid = t.relid;
