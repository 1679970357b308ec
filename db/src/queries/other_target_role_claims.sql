-- Other clusters' claims on these roles of a target instance ($1 instance, $2 cluster, $3 roles).
SELECT role, cluster, spec FROM dmf.target_roles
WHERE instance = $1 AND cluster <> $2 AND role = ANY ($3)
ORDER BY role, claimed_at, cluster
