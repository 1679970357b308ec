-- Merge a JSON object into a migration's state (top-level keys replaced).
UPDATE dmf.migrations SET state = state || $2, updated_at = now() WHERE id = $1
