SELECT m.id, m.cluster, m.phase, m.epoch, m.nudge, m.attempts, m.phase_started_at, m.failed_phase,
       m.last_error, m.abort_reason, m.pause_before, m.paused, m.state, m.lag_ms, m.lag_bytes,
       m.lag_over_since, m.updated_at, c.source_dsn, c.target_dsn, c.provider, c.settings
FROM dmf.migrations m
JOIN dmf.clusters c ON c.name = m.cluster
