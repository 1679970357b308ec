-- Prepared (two-phase) transactions of this database: any of them can be committed at any time,
-- by anyone, fence or not.
SELECT coalesce(array_agg(gid || ' (prepared ' || to_char(prepared, 'YYYY-MM-DD HH24:MI:SS') || ' by ' || owner || ')' ORDER BY prepared), '{}')
FROM pg_prepared_xacts
WHERE database = current_database()
