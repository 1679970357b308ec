-- The database-level default_transaction_read_only before the fence (NULL: not set), so that
-- unfencing restores exactly what was there.
SELECT (SELECT split_part(c, '=', 2)
        FROM unnest(s.setconfig) AS c
        WHERE c LIKE 'default\_transaction\_read\_only=%')
FROM pg_database d
LEFT JOIN pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = 0
WHERE d.datname = current_database()
