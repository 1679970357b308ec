-- The continuous sampler since $2 (or ever) until $3 (or now): counts and the consistency window's p50/p99.
SELECT count(*) AS samples,
       count(*) FILTER (WHERE status = 'matched') AS matched,
       count(*) FILTER (WHERE status = 'mismatch') AS mismatched,
       count(*) FILTER (WHERE status = 'unsettled') AS unsettled,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY window_ms) AS window_p50_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY window_ms) AS window_p99_ms,
       min(at) AS first_at
FROM dmf.audit_samples
WHERE migration = $1 AND ($2::timestamptz IS NULL OR at >= $2) AND ($3::timestamptz IS NULL OR at <= $3)
