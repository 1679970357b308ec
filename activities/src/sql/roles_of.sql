-- The attributes of the roles named in $1 (those that exist). Expiry times are in UTC, so that
-- two servers in different time zones compare equal.
SELECT r.rolname::text AS name,
       r.rolsuper AS superuser,
       r.rolinherit AS inherit,
       r.rolcreaterole AS createrole,
       r.rolcreatedb AS createdb,
       r.rolcanlogin AS login,
       r.rolreplication AS replication,
       r.rolbypassrls AS bypassrls,
       r.rolconnlimit AS connlimit,
       CASE WHEN isfinite(r.rolvaliduntil) THEN to_char(r.rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
            ELSE r.rolvaliduntil::text END AS valid_until
FROM pg_roles r
WHERE r.rolname = ANY ($1)
ORDER BY 1
