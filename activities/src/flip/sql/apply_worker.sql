-- The apply worker of a subscription, while it runs (none once DISABLE has taken effect).
SELECT pid FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL AND relid IS NULL
