-- A cluster's claims on roles of a target instance ($1 instance, $2 cluster, $3 roles, $4 specs):
-- its earlier claims are replaced (the source may have changed between attempts).
WITH gone AS (
    DELETE FROM dmf.target_roles WHERE instance = $1 AND cluster = $2
)
INSERT INTO dmf.target_roles (instance, role, cluster, spec)
SELECT $1, r, $2, s FROM unnest($3::text[], $4::jsonb[]) AS t (r, s)
ON CONFLICT (instance, role, cluster) DO UPDATE SET spec = excluded.spec, claimed_at = now()
