-- Changes whenever anything the dashboard shows may have: an event, a migration's row (phase,
-- lag, state), hydration or audit progress. The ids read one index end; the two max(updated_at)
-- read the migrations (one row per cluster) and the copy chunks (tens per cluster), once per
-- dashboard refresh, whatever the pages open.
SELECT concat_ws(':',
    (SELECT max(id) FROM dmf.events),
    (SELECT extract(epoch FROM max(updated_at)) FROM dmf.migrations),
    (SELECT max(id) FROM dmf.audit_samples),
    (SELECT max(id) FROM dmf.audit_results),
    (SELECT extract(epoch FROM max(updated_at)) FROM dmf.copy_progress))
