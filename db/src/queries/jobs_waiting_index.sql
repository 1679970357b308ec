-- The jobs still waiting to run, indexed apart from the rest: apalis keeps every done job, one per
-- watch tick and migration (hundreds of thousands an hour for a fleet), and the reconciler's
-- stranded check (stranded.sql) looks only for waiting ones. Without it that check scanned every
-- job (59 ms at 600,000 jobs, growing); with it, 10 ms whatever the history. Made after apalis's
-- own tables exist (`Db::init`).
CREATE INDEX IF NOT EXISTS dmf_jobs_waiting ON apalis.jobs (job_type, idempotency_key)
WHERE status IN ('Pending', 'Queued')
