-- One lag sample per guard tick; two ticks in the same instant keep the later one.
INSERT INTO dmf.lag_samples (migration, lag_ms, lag_bytes, retained_bytes)
VALUES ($1, $2, $3, $4)
ON CONFLICT (migration, at) DO UPDATE SET lag_ms = EXCLUDED.lag_ms, lag_bytes = EXCLUDED.lag_bytes, retained_bytes = EXCLUDED.retained_bytes
