INSERT INTO dmf.fleets (name, max_concurrent, max_per_source_host, breaker_threshold, manifest, max_active)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (name) DO UPDATE
SET max_concurrent = EXCLUDED.max_concurrent,
    max_active = EXCLUDED.max_active,
    max_per_source_host = EXCLUDED.max_per_source_host,
    breaker_threshold = EXCLUDED.breaker_threshold,
    manifest = dmf.fleets.manifest || E'\n' || EXCLUDED.manifest
