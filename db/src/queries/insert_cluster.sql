INSERT INTO dmf.clusters (name, fleet, wave, source_dsn, source_host, target_dsn, provider, settings)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
