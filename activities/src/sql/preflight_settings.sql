SELECT current_setting('wal_level') AS wal_level,
       current_setting('max_replication_slots')::int AS max_slots,
       (SELECT count(*) FROM pg_replication_slots)::int AS used_slots,
       current_setting('max_wal_senders')::int AS max_senders,
       (SELECT count(*) FROM pg_stat_replication)::int AS used_senders,
       current_setting('server_version_num')::int AS version_num,
       r.rolsuper AS is_superuser,
       (r.rolsuper OR r.rolreplication) AS can_replicate,
       pg_database_size(current_database()) AS db_bytes,
       (SELECT count(*) FROM pg_largeobject_metadata) AS large_objects,
       has_database_privilege(current_database(), 'CREATE') AS can_create
FROM pg_roles r
WHERE r.rolname = current_user
