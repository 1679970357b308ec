-- Tables to copy (partitioned parents hold no rows), their copyable columns and single-column
-- integer primary key, if any (used to split large tables into key ranges).
SELECT n.nspname AS schema,
       c.relname AS name,
       pg_table_size(c.oid) AS bytes,
       (pg_relation_size(c.oid) / current_setting('block_size')::int)::int8 AS blocks,
       (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
          FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '') AS columns,
       (SELECT a.attname
          FROM pg_index i
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = c.oid AND i.indisprimary AND i.indnatts = 1
           AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)) AS int_key,
       -- binary COPY is cheaper to produce and parse; only when every column's type has binary I/O
       (SELECT coalesce(bool_and(t.typsend <> 0 AND t.typreceive <> 0), true)
          FROM pg_attribute a
          JOIN pg_type t ON t.oid = a.atttypid
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '') AS binary_ok
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
  AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY pg_table_size(c.oid) DESC
