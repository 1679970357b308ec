-- dmf control plane: fleets, clusters, migrations, routes, events, audit results, hydration progress.
CREATE SCHEMA IF NOT EXISTS dmf;

CREATE TABLE dmf.fleets (
    name               text PRIMARY KEY,
    max_concurrent     integer NOT NULL CHECK (max_concurrent > 0),
    max_per_source_host integer NOT NULL CHECK (max_per_source_host > 0),
    breaker_threshold  double precision NOT NULL CHECK (breaker_threshold >= 0 AND breaker_threshold <= 1),
    -- open breaker: no new wave is released until an operator resumes the fleet
    breaker_open       boolean NOT NULL DEFAULT false,
    breaker_reason     text,
    manifest           text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dmf.waves (
    fleet        text NOT NULL REFERENCES dmf.fleets(name),
    wave         integer NOT NULL,
    released_at  timestamptz,
    PRIMARY KEY (fleet, wave)
);

CREATE TABLE dmf.clusters (
    name         text PRIMARY KEY,
    fleet        text NOT NULL REFERENCES dmf.fleets(name),
    wave         integer NOT NULL,
    source_dsn   text NOT NULL,
    source_host  text NOT NULL,
    -- an existing target to adopt; NULL means the provider creates one
    target_dsn   text,
    provider     text NOT NULL,
    settings     jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (fleet, wave) REFERENCES dmf.waves(fleet, wave)
);

CREATE TABLE dmf.migrations (
    id               uuid PRIMARY KEY,
    cluster          text NOT NULL UNIQUE REFERENCES dmf.clusters(name),
    phase            text NOT NULL,
    epoch            bigint NOT NULL DEFAULT 0,
    -- bumped with every job pushed for the same (phase, epoch): watch ticks, retries, nudges
    nudge            bigint NOT NULL DEFAULT 0,
    attempts         integer NOT NULL DEFAULT 0,
    phase_started_at timestamptz NOT NULL DEFAULT now(),
    failed_phase     text,
    last_error       text,
    abort_reason     text,
    pause_before     text[] NOT NULL DEFAULT '{}',
    paused           boolean NOT NULL DEFAULT false,
    -- what the activities learned and must survive a crash (target endpoint, slot names, reports)
    state            jsonb NOT NULL DEFAULT '{}',
    lag_ms           bigint,
    lag_bytes        bigint,
    lag_over_since   timestamptz,
    lag_sampled_at   timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX migrations_phase_idx ON dmf.migrations(phase);

-- One holder runs a migration's activity at a time. The holder renews; an expired lease is free.
CREATE TABLE dmf.leases (
    migration    uuid PRIMARY KEY REFERENCES dmf.migrations(id) ON DELETE CASCADE,
    holder       text NOT NULL,
    epoch        bigint NOT NULL,
    expires_at   timestamptz NOT NULL
);

CREATE TABLE dmf.routes (
    cluster          text PRIMARY KEY REFERENCES dmf.clusters(name),
    primary_endpoint text NOT NULL,
    read_endpoint    text NOT NULL,
    mode             text NOT NULL DEFAULT 'source',
    route_epoch      bigint NOT NULL DEFAULT 1,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dmf.events (
    id          bigserial PRIMARY KEY,
    migration   uuid REFERENCES dmf.migrations(id),
    cluster     text,
    kind        text NOT NULL,          -- transition | retry | abort_requested | resume | enqueue | breaker | ...
    from_phase  text,
    to_phase    text,
    epoch       bigint,
    actor       text NOT NULL,
    detail      text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_migration_idx ON dmf.events(migration, id);

-- Hydration progress per table chunk: what status shows and what a resumed hydration trusts.
CREATE TABLE dmf.copy_progress (
    migration     uuid NOT NULL REFERENCES dmf.migrations(id) ON DELETE CASCADE,
    table_name    text NOT NULL,
    chunk         integer NOT NULL,
    rows_copied   bigint NOT NULL DEFAULT 0,
    bytes_copied  bigint NOT NULL DEFAULT 0,
    bytes_total   bigint NOT NULL DEFAULT 0,
    done          boolean NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration, table_name, chunk)
);

CREATE TABLE dmf.audit_results (
    id          bigserial PRIMARY KEY,
    migration   uuid NOT NULL REFERENCES dmf.migrations(id) ON DELETE CASCADE,
    kind        text NOT NULL,
    status      text NOT NULL,
    lsn         text,
    detail      jsonb NOT NULL DEFAULT '{}',
    at          timestamptz NOT NULL DEFAULT now()
);
