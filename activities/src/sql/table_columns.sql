-- Every user table dmf copies (dmf's own schema left out) with its columns and their types, in
-- column order: what the schema-drift guard compares between source and target.
SELECT format('%I.%I', n.nspname, c.relname) AS tbl,
       a.attname::text AS col,
       format_type(a.atttypid, a.atttypmod) AS type
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p')
  AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_dmf')
  AND n.nspname NOT LIKE 'pg_toast%'
  AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY 1, a.attnum
