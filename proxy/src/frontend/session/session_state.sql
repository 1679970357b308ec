-- What a session holds on its backend, read just before the session moves to a new backend:
-- state that cannot move (counted), settings changed with SET, prepared statements made with
-- SQL PREPARE.
SELECT json_build_object(
    'temp_tables', (SELECT count(*) FROM pg_class WHERE relpersistence = 't' AND relnamespace = pg_my_temp_schema()),
    'advisory_locks', (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
    'listen', (SELECT count(*) FROM pg_listening_channels()),
    'hold_cursors', (SELECT count(*) FROM pg_cursors WHERE is_holdable),
    'settings', (SELECT coalesce(json_agg(json_build_array(name, setting)), '[]') FROM pg_settings WHERE source = 'session'),
    'prepared', (SELECT coalesce(json_agg(statement), '[]') FROM pg_prepared_statements WHERE from_sql)
)::text
