-- A planned full compare's chunks, all in one statement: $2 is a JSON array of
-- {"table", "chunk", "lo", "hi"} (lo and hi: the key bounds as arrays of text, or null).
INSERT INTO dmf.audit_chunks (run, table_name, chunk, lo, hi)
SELECT $1,
       c->>'table',
       (c->>'chunk')::int,
       CASE WHEN jsonb_typeof(c->'lo') = 'array'
            THEN ARRAY(SELECT v FROM jsonb_array_elements_text(c->'lo') WITH ORDINALITY AS e(v, n) ORDER BY n) END,
       CASE WHEN jsonb_typeof(c->'hi') = 'array'
            THEN ARRAY(SELECT v FROM jsonb_array_elements_text(c->'hi') WITH ORDINALITY AS e(v, n) ORDER BY n) END
FROM jsonb_array_elements($2::jsonb) AS c
