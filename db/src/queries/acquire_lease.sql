INSERT INTO dmf.leases AS l (migration, holder, epoch, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
ON CONFLICT (migration) DO UPDATE
SET holder = EXCLUDED.holder,
    epoch = EXCLUDED.epoch,
    expires_at = EXCLUDED.expires_at
WHERE l.expires_at < now()
   OR l.holder = EXCLUDED.holder
RETURNING holder
