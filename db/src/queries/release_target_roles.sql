-- A cluster's claims on a target instance go ($1 instance, $2 cluster), and so does the record of
-- the roles its cleanup dropped ($3).
WITH made AS (
    DELETE FROM dmf.target_roles_made WHERE instance = $1 AND role = ANY ($3)
)
DELETE FROM dmf.target_roles WHERE instance = $1 AND cluster = $2
