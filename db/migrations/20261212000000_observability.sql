-- What the operator sees and what an incident review proves afterwards: replication lag over time
-- per migration (recorded with each guard tick, downsampled as it ages), one cutover record per
-- run of the flip or the rollback (moved or undone, with its evidence), and the longest wait a
-- proxy's clients had at its last hold.

CREATE TABLE dmf.lag_samples (
    migration      uuid NOT NULL REFERENCES dmf.migrations(id) ON DELETE CASCADE,
    at             timestamptz NOT NULL DEFAULT now(),
    lag_ms         bigint,
    lag_bytes      bigint,
    -- WAL the source retains for the migration's slots
    retained_bytes bigint,
    -- 1 for a raw sample; for a downsampled one, how many raw samples it stands for
    samples        integer NOT NULL DEFAULT 1,
    PRIMARY KEY (migration, at)
);

CREATE TABLE dmf.cutovers (
    id           bigserial PRIMARY KEY,
    migration    uuid NOT NULL REFERENCES dmf.migrations(id) ON DELETE CASCADE,
    cluster      text NOT NULL,
    -- flip | rollback
    way          text NOT NULL CHECK (way IN ('flip', 'rollback')),
    -- moved: traffic is on the other side; undone: it stayed (or returned) where it was
    outcome      text NOT NULL CHECK (outcome IN ('moved', 'undone')),
    -- the route epoch that held traffic (NULL for a run undone before its hold)
    hold_epoch   bigint,
    worker       text,
    at           timestamptz NOT NULL DEFAULT now(),
    -- the run's record: steps and timings, fence, final LSNs, sequences, proxies, pause, stall
    record       jsonb NOT NULL
);
-- a run is recorded once, even when the worker that moved it died before recording and the next
-- run records it
CREATE UNIQUE INDEX cutovers_run_idx ON dmf.cutovers(migration, way, outcome, COALESCE(hold_epoch, -id));
CREATE INDEX cutovers_cluster_idx ON dmf.cutovers(cluster, id);

-- The longest a client transaction waited at this proxy's last hold (reported with the
-- acknowledgement of the epoch that released it), microseconds.
ALTER TABLE dmf.proxies ADD COLUMN hold_longest_us bigint;

-- The fleet's completions over time, without reading the whole event log.
CREATE INDEX events_completed_idx ON dmf.events (at) WHERE to_phase = 'completed';
