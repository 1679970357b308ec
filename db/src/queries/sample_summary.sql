-- The continuous sampler since $2 (or ever) until $3 (or now): counts (timed_only: windows timed,
-- rows not re-checked; untimed: not applied within the fence timeout) and the window's p50/p99.
SELECT count(*) AS samples,
       count(*) FILTER (WHERE status = 'matched') AS matched,
       count(*) FILTER (WHERE status = 'mismatch') AS mismatched,
       count(*) FILTER (WHERE status = 'unsettled') AS unsettled,
       count(*) FILTER (WHERE status = 'timed') AS timed_only,
       count(*) FILTER (WHERE window_ms IS NULL) AS untimed,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY window_ms) AS window_p50_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY window_ms) AS window_p99_ms,
       min(at) AS first_at
FROM dmf.audit_samples
WHERE migration = $1 AND ($2::timestamptz IS NULL OR at >= $2) AND ($3::timestamptz IS NULL OR at <= $3)
