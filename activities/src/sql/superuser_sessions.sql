-- Superusers with sessions on this database (other than ours): the fence cannot keep them out.
SELECT DISTINCT a.usename::text
FROM pg_stat_activity a
JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.datname = current_database()
  AND a.backend_type = 'client backend'
  AND r.rolsuper
  AND a.pid <> pg_backend_pid()
ORDER BY 1
