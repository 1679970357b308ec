-- pgbench's own invariant, where the application's writes went: every delta is in the history and
-- was added to one account, one teller and one branch. Returns the history rows and whether the
-- four sums agree.
SELECT
    (SELECT count(*) FROM pgbench_history) AS history_rows,
    (SELECT coalesce(sum(abalance), 0)::int8 FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0)::int8 FROM pgbench_history)
    AND (SELECT coalesce(sum(tbalance), 0)::int8 FROM pgbench_tellers) = (SELECT coalesce(sum(delta), 0)::int8 FROM pgbench_history)
    AND (SELECT coalesce(sum(bbalance), 0)::int8 FROM pgbench_branches) = (SELECT coalesce(sum(delta), 0)::int8 FROM pgbench_history) AS balanced
