-- Change a route and bump its epoch; NULL parameters keep the current value.
UPDATE dmf.routes SET
    primary_endpoint = COALESCE($2, primary_endpoint),
    read_endpoint    = COALESCE($3, read_endpoint),
    mode             = COALESCE($4, mode),
    hold             = COALESCE($5, hold),
    hold_deadline_ms = COALESCE($6, hold_deadline_ms),
    shadow_endpoint  = CASE WHEN $7 THEN NULL ELSE COALESCE($8, shadow_endpoint) END,
    shadow_fraction  = COALESCE($9, shadow_fraction),
    next_primary     = CASE WHEN $10 THEN NULL ELSE COALESCE($11, next_primary) END,
    route_epoch      = route_epoch + 1,
    updated_at       = now()
WHERE cluster = $1
RETURNING cluster, primary_endpoint, read_endpoint, mode, hold, hold_deadline_ms, shadow_endpoint,
          shadow_fraction, next_primary, route_epoch, updated_at
