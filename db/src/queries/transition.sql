UPDATE dmf.migrations
SET phase            = $4,
    epoch            = epoch + 1,
    nudge            = 0,
    attempts         = 0,
    phase_started_at = now(),
    failed_phase     = CASE WHEN $4 = 'failed' THEN $2 ELSE failed_phase END,
    abort_reason     = COALESCE($5, abort_reason),
    last_error       = CASE WHEN $4 IN ('failed', 'aborting', 'aborted') THEN COALESCE($6, last_error) ELSE $6 END,
    paused           = ($4 = ANY (pause_before)),
    lag_over_since   = NULL,
    updated_at       = now()
WHERE id = $1
  AND phase = $2
  AND epoch = $3
RETURNING cluster, epoch, paused
