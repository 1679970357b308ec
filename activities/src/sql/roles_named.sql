-- The roles the current database needs on a target: those that own its objects or are named in
-- its ACLs, policies and default privileges; every role that is a member of one of those
-- (directly or not: members use what their groups were granted); and every group those roles
-- belong to (so that their memberships can be made again). Predefined roles (pg_*) come along
-- for their memberships only. Objects of the system catalogs (oids below 16384), temporary
-- schemas and dmf's own heartbeat schema name nobody. Their attributes: roles_of.sql.
WITH RECURSIVE named(oid) AS (
    SELECT relowner FROM pg_class WHERE oid >= 16384
    UNION SELECT (aclexplode(relacl)).grantee FROM pg_class WHERE relacl IS NOT NULL AND oid >= 16384
    UNION SELECT (aclexplode(attacl)).grantee FROM pg_attribute WHERE attacl IS NOT NULL AND attrelid >= 16384
    UNION SELECT nspowner FROM pg_namespace
          WHERE oid >= 16384 AND nspname <> '_dmf' AND nspname NOT LIKE 'pg_temp%' AND nspname NOT LIKE 'pg_toast%'
    UNION SELECT (aclexplode(nspacl)).grantee FROM pg_namespace
          WHERE nspacl IS NOT NULL AND nspname NOT IN ('pg_catalog', 'information_schema', '_dmf')
            AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%'
    UNION SELECT proowner FROM pg_proc WHERE oid >= 16384
    UNION SELECT (aclexplode(proacl)).grantee FROM pg_proc WHERE proacl IS NOT NULL AND oid >= 16384
    UNION SELECT typowner FROM pg_type WHERE oid >= 16384
    UNION SELECT (aclexplode(typacl)).grantee FROM pg_type WHERE typacl IS NOT NULL AND oid >= 16384
    UNION SELECT defaclrole FROM pg_default_acl
    UNION SELECT (aclexplode(defaclacl)).grantee FROM pg_default_acl
    UNION SELECT unnest(polroles) FROM pg_policy
),
members(oid) AS (
    SELECT oid FROM named WHERE oid <> 0
    UNION SELECT m.member FROM pg_auth_members m JOIN members ON m.roleid = members.oid
),
needed(oid) AS (
    SELECT oid FROM members
    UNION SELECT m.roleid FROM pg_auth_members m JOIN needed ON m.member = needed.oid
)
SELECT r.rolname::text AS name
FROM pg_roles r
JOIN needed ON needed.oid = r.oid
ORDER BY 1
