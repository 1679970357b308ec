-- An attempt's planned chunks, all in one statement: (table, chunk, estimated bytes) as arrays.
INSERT INTO dmf.copy_progress (migration, table_name, chunk, bytes_total)
SELECT $1, t, c, b
FROM unnest($2::text[], $3::int[], $4::bigint[]) AS p(t, c, b)
