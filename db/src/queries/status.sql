SELECT c.name AS cluster, c.fleet, c.wave, m.phase, m.epoch, m.paused, m.attempts,
       m.lag_ms, m.lag_bytes,
       COALESCE(p.rows_copied, 0)::bigint AS rows_copied,
       COALESCE(p.bytes_copied, 0)::bigint AS bytes_copied,
       COALESCE(p.bytes_total, 0)::bigint AS bytes_total,
       COALESCE(p.tables_done, 0)::bigint AS tables_done,
       COALESCE(p.tables_total, 0)::bigint AS tables_total,
       EXTRACT(EPOCH FROM (p.last_update - p.first_update))::float8 AS copy_seconds,
       m.last_error, m.abort_reason, m.phase_started_at, m.updated_at
FROM dmf.clusters c
JOIN dmf.migrations m ON m.cluster = c.name
LEFT JOIN LATERAL (
    SELECT sum(rows_copied) AS rows_copied,
           sum(bytes_copied) AS bytes_copied,
           sum(bytes_total) AS bytes_total,
           count(DISTINCT table_name) FILTER (WHERE done) AS tables_done,
           count(DISTINCT table_name) AS tables_total,
           (m.state ->> 'copy_started_at')::timestamptz AS first_update,
           max(updated_at) AS last_update
    FROM dmf.copy_progress cp
    WHERE cp.migration = m.id
) p ON true
WHERE $1::text IS NULL OR c.name = $1
ORDER BY c.fleet, c.wave, c.name
