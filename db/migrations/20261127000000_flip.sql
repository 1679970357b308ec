-- The flip: every proxy reports, with each acknowledgement, the backend pids its sessions hold on
-- their primary, so that fencing a database ends every other session but spares the held ones
-- (they move to the new primary with their settings at release).
ALTER TABLE dmf.proxies ADD COLUMN backend_pids integer[] NOT NULL DEFAULT '{}';
-- During a flip's hold: where the route is about to point, so that proxies open their sessions'
-- backends there while traffic is held instead of after the release.
ALTER TABLE dmf.routes ADD COLUMN next_primary text;
