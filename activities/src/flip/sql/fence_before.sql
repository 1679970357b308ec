-- What the fence changes on this database, read before it is raised so that lifting it restores
-- exactly that:
--   setting:      the database-level default_transaction_read_only (NULL: not set);
--   connect:      who may connect ('PUBLIC' or role names), other than our own role, superusers
--                 (they cannot be kept out: our role must keep working, superusers bypass it) and
--                 the migration's replication role ($1: its subscription must keep reconnecting);
--   granted_self: our role (not a superuser) could connect only through PUBLIC, so the fence must
--                 grant it CONNECT itself before revoking PUBLIC's (and lifting it revokes that).
WITH acl AS (
    SELECT a.grantee, a.privilege_type
    FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
    WHERE d.datname = current_database()
)
SELECT
    (SELECT split_part(c, '=', 2)
     FROM pg_database d
     JOIN pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = 0, unnest(s.setconfig) AS c
     WHERE d.datname = current_database() AND c LIKE 'default\_transaction\_read\_only=%') AS setting,
    coalesce((SELECT array_agg(DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE r.rolname::text END)
              FROM acl a LEFT JOIN pg_roles r ON r.oid = a.grantee
              WHERE a.privilege_type = 'CONNECT' AND (a.grantee = 0 OR (r.rolname <> current_user AND NOT r.rolsuper
                                                                     AND r.rolname <> $1))),
             '{}') AS connect,
    NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
    AND NOT EXISTS (SELECT 1 FROM acl a JOIN pg_roles r ON r.oid = a.grantee
                    WHERE a.privilege_type = 'CONNECT' AND r.rolname = current_user) AS granted_self
