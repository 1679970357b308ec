-- Every user table dmf copies (dmf's own schema and extensions' tables left out) with its columns
-- and their types, in column order: what the schema-drift guard compares between source and
-- target. Run with search_path = pg_catalog, so that every type outside it is schema-qualified
-- the same way on both sides.
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
  -- an extension's tables follow its version, which a new major's default may change
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, a.attnum
