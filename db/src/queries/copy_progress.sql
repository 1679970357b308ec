UPDATE dmf.copy_progress
SET rows_copied = $4,
    bytes_copied = $5,
    -- the estimate was pg_table_size; once done the real size is known
    bytes_total = CASE WHEN $6 THEN $5 ELSE GREATEST(bytes_total, $5) END,
    done = $6,
    updated_at = now()
WHERE migration = $1 AND table_name = $2 AND chunk = $3
