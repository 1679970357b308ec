INSERT INTO dmf.events (migration, cluster, kind, from_phase, to_phase, epoch, actor, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
