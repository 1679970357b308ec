-- Transactions open in snapshot $1 that a snapshot taken now still does not see (in progress, or
-- committed but not yet visible). txid_* rather than pg_snapshot_*: sources older than 13 have them.
SELECT count(*)
FROM txid_snapshot_xip($1::text::txid_snapshot) AS x
WHERE NOT txid_visible_in_snapshot(x, txid_current_snapshot())
