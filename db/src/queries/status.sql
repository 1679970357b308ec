SELECT c.name AS cluster, c.fleet, c.wave, m.phase, m.epoch, m.paused, m.attempts,
       m.lag_ms, m.lag_bytes, m.lag_over_since,
       COALESCE(p.rows_copied, 0)::bigint AS rows_copied,
       COALESCE(p.bytes_copied, 0)::bigint AS bytes_copied,
       COALESCE(p.bytes_total, 0)::bigint AS bytes_total,
       COALESCE(p.tables_done, 0)::bigint AS tables_done,
       COALESCE(p.tables_total, 0)::bigint AS tables_total,
       p.last_update AS copy_last_update,
       m.last_error, m.abort_reason, m.phase_started_at, m.updated_at,
       a.status AS audit_status, a.chunks_total AS audit_chunks_total, COALESCE(a.chunks_done, 0)::bigint AS audit_chunks_done,
       (SELECT count(*) FROM dmf.audit_results d WHERE d.migration = m.id) AS audit_differences,
       w.p50 AS window_p50_ms, w.p99 AS window_p99_ms,
       c.provider, COALESCE(c.settings ->> 'replication', 'logical') AS replication,
       m.state
FROM dmf.clusters c
JOIN dmf.migrations m ON m.cluster = c.name
LEFT JOIN LATERAL (
    SELECT sum(rows_copied) AS rows_copied,
           sum(bytes_copied) AS bytes_copied,
           sum(bytes_total) AS bytes_total,
           count(DISTINCT table_name) FILTER (WHERE done) AS tables_done,
           count(DISTINCT table_name) AS tables_total,
           max(updated_at) AS last_update
    FROM dmf.copy_progress cp
    WHERE cp.migration = m.id
) p ON true
-- the newest full compare and its progress
LEFT JOIN LATERAL (
    SELECT r.status, r.chunks_total,
           (SELECT count(*) FROM dmf.audit_chunks ch WHERE ch.run = r.id AND ch.status <> 'pending') AS chunks_done
    FROM dmf.audit_runs r WHERE r.migration = m.id ORDER BY r.id DESC LIMIT 1
) a ON true
-- the consistency window over the last 1000 samples
LEFT JOIN LATERAL (
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY window_ms) AS p50,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY window_ms) AS p99
    FROM (SELECT window_ms FROM dmf.audit_samples s WHERE s.migration = m.id ORDER BY s.id DESC LIMIT 1000) recent
) w ON true
WHERE $1::text IS NULL OR c.name = $1
ORDER BY c.fleet, c.wave, c.name
