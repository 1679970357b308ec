-- Memberships among the roles named in $1: (group, member, with admin option).
SELECT g.rolname::text AS "group", m.rolname::text AS member, am.admin_option AS admin
FROM pg_auth_members am
JOIN pg_roles g ON g.oid = am.roleid
JOIN pg_roles m ON m.oid = am.member
WHERE m.rolname = ANY ($1)
ORDER BY 1, 2
