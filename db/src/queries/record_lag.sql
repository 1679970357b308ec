UPDATE dmf.migrations
SET lag_ms         = $2,
    lag_bytes      = $3,
    lag_sampled_at = now(),
    lag_over_since = CASE WHEN $4 THEN COALESCE(lag_over_since, now()) ELSE NULL END,
    updated_at     = now()
WHERE id = $1
RETURNING lag_over_since
