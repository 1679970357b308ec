-- A fleet's bound on clusters started and not yet finished (every phase from preflight to
-- flipped, rolling back included): waves release once hydrated, so without it clusters pile up
-- replicating, auditing and in shadow reads, each with its subscription, slots, walsenders and
-- proxy polling, until the machines that run them cannot keep replication lag under the flip's
-- limit. NULL: no bound (max_concurrent bounds preflight to hydrating only).
ALTER TABLE dmf.fleets ADD COLUMN max_active integer CHECK (max_active > 0);
