-- The caller's transaction goes on only while $2 holds migration $1's lease for epoch $3. The row
-- stays locked (FOR SHARE) until the transaction ends: no other worker takes the lease between
-- this check and the write it guards.
-- The migration must still be at that epoch too (an operator's abort moves it on at once).
SELECT 1 FROM dmf.leases l
JOIN dmf.migrations m ON m.id = l.migration AND m.epoch = l.epoch
WHERE l.migration = $1 AND l.holder = $2 AND l.epoch = $3 AND l.expires_at >= now()
FOR SHARE OF l
