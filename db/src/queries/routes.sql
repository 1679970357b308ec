-- Routes, one cluster's or all.
SELECT cluster, primary_endpoint, read_endpoint, mode, hold, hold_deadline_ms, shadow_endpoint,
       shadow_fraction, next_primary, route_epoch, updated_at
FROM dmf.routes
WHERE $1::text IS NULL OR cluster = $1
ORDER BY cluster
