-- Merge records into a migration's state without marking the migration updated (bookkeeping
-- that is not progress of its phase).
UPDATE dmf.migrations SET state = state || $2 WHERE id = $1
