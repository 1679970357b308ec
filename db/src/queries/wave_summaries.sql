SELECT w.wave,
       w.released_at IS NOT NULL AS released,
       count(m.id) AS total,
       count(m.id) FILTER (WHERE m.phase = ANY ($2)) AS settled,
       count(m.id) FILTER (WHERE m.phase IN ('aborting', 'aborted', 'failed')
                             AND COALESCE(m.abort_reason, '') <> 'operator') AS bad
FROM dmf.waves w
LEFT JOIN dmf.clusters c ON c.fleet = w.fleet AND c.wave = w.wave
LEFT JOIN dmf.migrations m ON m.cluster = c.name
WHERE w.fleet = $1
GROUP BY w.wave, w.released_at
ORDER BY w.wave
