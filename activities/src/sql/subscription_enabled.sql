-- Whether the migration's subscription is enabled in the target's database (no row: it is gone).
SELECT subenabled
FROM pg_subscription
WHERE subname = $1
  AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
