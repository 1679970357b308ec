-- The roles a cluster claims on a target instance that dmf made there and no other cluster claims
-- ($1 instance, $2 cluster): the ones its cleanup drops.
SELECT c.role FROM dmf.target_roles c
JOIN dmf.target_roles_made m ON m.instance = c.instance AND m.role = c.role
WHERE c.instance = $1 AND c.cluster = $2
  AND NOT EXISTS (SELECT 1 FROM dmf.target_roles o WHERE o.instance = c.instance AND o.role = c.role AND o.cluster <> c.cluster)
ORDER BY c.role
