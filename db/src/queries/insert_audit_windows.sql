-- Samples of the change stream that were timed but whose rows were not re-checked (the slice had
-- its re-checks already): $2 their windows in ms (NULL: not applied in time), $3 their commit LSNs.
INSERT INTO dmf.audit_samples (migration, window_ms, rows_checked, status, commit_lsn)
SELECT $1, w, 0, 'timed', lsn FROM unnest($2::float8[], $3::text[]) AS t(w, lsn)
