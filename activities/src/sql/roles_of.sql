-- The attributes of the roles named in $1 (those that exist), as roles_named.sql reads them.
SELECT r.rolname::text AS name,
       r.rolsuper AS superuser,
       r.rolinherit AS inherit,
       r.rolcreaterole AS createrole,
       r.rolcreatedb AS createdb,
       r.rolcanlogin AS login,
       r.rolreplication AS replication,
       r.rolbypassrls AS bypassrls,
       r.rolconnlimit AS connlimit,
       r.rolvaliduntil::text AS valid_until
FROM pg_roles r
WHERE r.rolname = ANY ($1)
ORDER BY 1
