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
       has_database_privilege(current_database(), 'CREATE') AS can_create,
       -- the subscriptions' replication role (repl_role): made with REPLICATION by a superuser,
       -- or given rds_replication by a member of rds_superuser (RDS, Aurora)
       (r.rolsuper OR (r.rolcreaterole AND CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_superuser')
                                                     AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication')
                                                THEN pg_has_role('rds_superuser', 'MEMBER') ELSE false END)) AS can_make_replication_role
FROM pg_roles r
WHERE r.rolname = current_user
