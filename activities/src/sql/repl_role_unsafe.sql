-- Whether the role $1 (a replication role dmf would use) has more than a subscription needs:
-- attributes beyond LOGIN and REPLICATION, members (which would share its exemption from the
-- flip's fence), or groups other than rds_replication. dmf does not use such a role.
SELECT r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolbypassrls
       OR EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.roleid = r.oid)
       OR EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                  WHERE m.member = r.oid AND g.rolname <> 'rds_replication') AS unsafe
FROM pg_roles r
WHERE r.rolname = $1
