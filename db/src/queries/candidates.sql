SELECT m.id AS migration, m.cluster, m.epoch, c.source_host
FROM dmf.migrations m
JOIN dmf.clusters c ON c.name = m.cluster
JOIN dmf.waves w ON w.fleet = c.fleet AND w.wave = c.wave
WHERE c.fleet = $1
  AND m.phase = 'pending'
  AND w.released_at IS NOT NULL
ORDER BY c.wave, c.created_at, c.name
