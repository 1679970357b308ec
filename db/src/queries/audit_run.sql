-- A full-compare run with its progress: the newest of a migration, or the one asked for ($2).
SELECT r.id, r.status, r.source_lsn, r.chunks_total,
       count(c.*) FILTER (WHERE c.status IN ('clean', 'mismatch')) AS chunks_done,
       count(c.*) FILTER (WHERE c.status = 'unsettled') AS chunks_unsettled,
       COALESCE(sum(c.source_rows) FILTER (WHERE c.status <> 'pending'), 0)::bigint AS rows_compared,
       (SELECT count(*) FROM dmf.audit_results d WHERE d.run = r.id) AS mismatches,
       r.requested_by, r.started_at, r.finished_at
FROM dmf.audit_runs r
LEFT JOIN dmf.audit_chunks c ON c.run = r.id
WHERE r.migration = $1 AND ($2::bigint IS NULL OR r.id = $2)
GROUP BY r.id
ORDER BY r.id DESC
LIMIT 1
