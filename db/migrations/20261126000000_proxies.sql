-- Routes the DAL proxies follow, and the proxies themselves (registration, heartbeat, applied epoch).
ALTER TABLE dmf.routes ALTER COLUMN mode SET DEFAULT 'primary';
UPDATE dmf.routes SET mode = 'primary' WHERE mode = 'source';
ALTER TABLE dmf.routes
    -- primary: every statement to primary_endpoint; split_reads: read-only statements outside
    -- transactions to read_endpoint (with read-your-writes), everything else to the primary
    ADD CONSTRAINT routes_mode_check CHECK (mode IN ('primary', 'split_reads')),
    -- hold new transactions at their boundary until a later epoch releases them
    ADD COLUMN hold             boolean NOT NULL DEFAULT false,
    -- how long a hold waits for in-flight transactions before ending them
    ADD COLUMN hold_deadline_ms integer NOT NULL DEFAULT 2000 CHECK (hold_deadline_ms > 0),
    -- shadow traffic: mirror this fraction of autocommit statements here, always rolled back
    ADD COLUMN shadow_endpoint  text,
    ADD COLUMN shadow_fraction  double precision NOT NULL DEFAULT 0 CHECK (shadow_fraction >= 0 AND shadow_fraction <= 1);

CREATE TABLE dmf.proxies (
    id            uuid PRIMARY KEY,
    cluster       text NOT NULL REFERENCES dmf.clusters(name) ON DELETE CASCADE,
    listen        text NOT NULL,
    host          text NOT NULL,
    pid           integer NOT NULL,
    -- a proxy that has not heartbeated for lease_ms has stopped sending writes anywhere
    lease_ms      integer NOT NULL CHECK (lease_ms > 0),
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    -- the newest route epoch this proxy has fully applied (for a hold: all in-flight work finished)
    applied_epoch bigint NOT NULL DEFAULT 0,
    held          boolean NOT NULL DEFAULT false,
    state         text NOT NULL DEFAULT 'serving',
    stats         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX proxies_cluster_idx ON dmf.proxies(cluster);

CREATE FUNCTION dmf.notify_route() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dmf_routes', NEW.cluster);
    RETURN NEW;
END
$$;
CREATE TRIGGER routes_notify AFTER INSERT OR UPDATE ON dmf.routes
    FOR EACH ROW EXECUTE FUNCTION dmf.notify_route();
