-- A route change is announced on its cluster's own channel (dmf.route_channel), so that a proxy
-- wakes for its cluster's changes only: with one shared channel, every change in a fleet of
-- hundreds of clusters woke every proxy. The shared channel `dmf_routes` is still notified, for
-- proxies of an earlier release during a rolling upgrade.
CREATE FUNCTION dmf.route_channel(cluster text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'dmf_route_' || left(encode(sha256(convert_to(cluster, 'UTF8')), 'hex'), 40)
$$;

CREATE OR REPLACE FUNCTION dmf.notify_route() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(dmf.route_channel(NEW.cluster), NEW.cluster);
    PERFORM pg_notify('dmf_routes', NEW.cluster);
    RETURN NEW;
END
$$;

GRANT EXECUTE ON FUNCTION dmf.route_channel(text) TO PUBLIC;
