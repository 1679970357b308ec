-- Lag history ages: raw samples older than $1 seconds fold into one per minute, those older than
-- $2 seconds into one per ten minutes (averages weighted by the raw samples each stands for, the
-- most WAL retained), and samples older than $3 seconds go.
WITH aged AS (
    DELETE FROM dmf.lag_samples s
    WHERE s.at < now() - make_interval(secs => $3)
       OR (s.at < now() - make_interval(secs => $2)
           AND to_timestamp(floor(extract(epoch FROM s.at) / 600) * 600) <> s.at)
       OR (s.at < now() - make_interval(secs => $1) AND date_trunc('minute', s.at) <> s.at)
    RETURNING s.*
), folded AS (
    SELECT migration,
           CASE WHEN at < now() - make_interval(secs => $2)
                THEN to_timestamp(floor(extract(epoch FROM at) / 600) * 600)
                ELSE date_trunc('minute', at) END AS bucket,
           lag_ms, lag_bytes, retained_bytes, samples
    FROM aged
    WHERE at >= now() - make_interval(secs => $3)
)
INSERT INTO dmf.lag_samples AS l (migration, at, lag_ms, lag_bytes, retained_bytes, samples)
SELECT migration, bucket,
       round(sum(lag_ms::numeric * samples) / NULLIF(sum(samples) FILTER (WHERE lag_ms IS NOT NULL), 0))::bigint,
       round(sum(lag_bytes::numeric * samples) / NULLIF(sum(samples) FILTER (WHERE lag_bytes IS NOT NULL), 0))::bigint,
       max(retained_bytes),
       sum(samples)::integer
FROM folded
GROUP BY migration, bucket
ON CONFLICT (migration, at) DO UPDATE
-- (a side without a value leaves the other's: an average of what was measured)
SET lag_ms = CASE WHEN l.lag_ms IS NULL THEN EXCLUDED.lag_ms WHEN EXCLUDED.lag_ms IS NULL THEN l.lag_ms
                  ELSE round((l.lag_ms::numeric * l.samples + EXCLUDED.lag_ms * EXCLUDED.samples) / (l.samples + EXCLUDED.samples))::bigint END,
    lag_bytes = CASE WHEN l.lag_bytes IS NULL THEN EXCLUDED.lag_bytes WHEN EXCLUDED.lag_bytes IS NULL THEN l.lag_bytes
                     ELSE round((l.lag_bytes::numeric * l.samples + EXCLUDED.lag_bytes * EXCLUDED.samples) / (l.samples + EXCLUDED.samples))::bigint END,
    retained_bytes = GREATEST(l.retained_bytes, EXCLUDED.retained_bytes),
    samples = l.samples + EXCLUDED.samples
