-- Changes whenever anything the dashboard shows may have: an event, a migration's row (phase,
-- lag, state), hydration or audit progress. Each part reads one index end, never a whole table.
SELECT concat_ws(':',
    (SELECT max(id) FROM dmf.events),
    (SELECT extract(epoch FROM max(updated_at)) FROM dmf.migrations),
    (SELECT max(id) FROM dmf.audit_samples),
    (SELECT max(id) FROM dmf.audit_results),
    (SELECT extract(epoch FROM max(updated_at)) FROM dmf.copy_progress))
