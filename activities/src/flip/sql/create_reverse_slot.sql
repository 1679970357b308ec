-- The reverse slot on the target, unless a previous run of the same flip made it already.
SELECT pg_create_logical_replication_slot($1, 'pgoutput')
WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)
