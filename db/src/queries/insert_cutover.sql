INSERT INTO dmf.cutovers (migration, cluster, way, outcome, hold_epoch, worker, record)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING
