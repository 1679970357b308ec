WITH renewed AS (
    UPDATE dmf.leases
    SET expires_at = now() + make_interval(secs => $3)
    WHERE migration = $1
      AND holder = $2
      AND expires_at >= now()
    RETURNING migration
)
SELECT EXISTS (SELECT 1 FROM renewed) AS held, m.phase, m.epoch
FROM dmf.migrations m
WHERE m.id = $1
