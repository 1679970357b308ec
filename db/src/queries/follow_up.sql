UPDATE dmf.migrations
SET nudge      = nudge + 1,
    -- a healthy watch tick ends a run of failed attempts: the cap counts consecutive failures
    attempts   = CASE WHEN $5 THEN 0 ELSE attempts END,
    last_error = COALESCE($4, last_error),
    updated_at = now()
WHERE id = $1
  AND phase = $2
  AND epoch = $3
RETURNING cluster, nudge
