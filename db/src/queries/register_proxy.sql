INSERT INTO dmf.proxies (id, cluster, listen, host, pid, lease_ms, applied_epoch)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), state = 'serving'
