-- dmf_proxy: what a `dmf proxy` may do in the control plane, and no more. A proxy runs on every
-- application host: it logs in as a role that is a member of dmf_proxy, so that neither dmf's own
-- control-plane credentials nor any database's reach those hosts. It reads the routes (which
-- carry no password) and keeps its own row in dmf.proxies (registration, heartbeats, the epochs
-- it applied); notifications on dmf_routes need no grant.
--   CREATE ROLE orders_proxy LOGIN PASSWORD '...' IN ROLE dmf_proxy;
-- The role is made only where the role running `dmf init` may make roles; elsewhere the notice
-- says what an operator runs instead.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dmf_proxy') THEN
        IF (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
            CREATE ROLE dmf_proxy NOLOGIN;
        ELSE
            RAISE NOTICE 'dmf_proxy: this role cannot create roles; as a role that can: CREATE ROLE dmf_proxy NOLOGIN; GRANT USAGE ON SCHEMA dmf TO dmf_proxy; GRANT SELECT ON dmf.routes TO dmf_proxy; GRANT SELECT, INSERT, UPDATE ON dmf.proxies TO dmf_proxy';
            RETURN;
        END IF;
    END IF;
    GRANT USAGE ON SCHEMA dmf TO dmf_proxy;
    GRANT SELECT ON dmf.routes TO dmf_proxy;
    GRANT SELECT, INSERT, UPDATE ON dmf.proxies TO dmf_proxy;
END $$;
