UPDATE dmf.migrations
SET nudge      = nudge + 1,
    last_error = COALESCE($4, last_error),
    updated_at = now()
WHERE id = $1
  AND phase = $2
  AND epoch = $3
RETURNING cluster, nudge
