-- Registered proxies, newest first; `alive` by the control plane's clock.
SELECT id, cluster, listen, host, pid, lease_ms, started_at, heartbeat_at, applied_epoch, held, state, stats, backend_pids, drained, cannot_login, hold_longest_us,
       state <> 'stopped' AND heartbeat_at + make_interval(secs => lease_ms / 1000.0) > now() AS alive
FROM dmf.proxies
WHERE $1::text IS NULL OR cluster = $1
ORDER BY cluster, started_at DESC
