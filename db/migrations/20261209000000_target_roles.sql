-- Roles on a pool of target instances (the local provider's `target_instance` mode): roles are
-- instance-wide, so clusters whose databases share an instance share a role of the same name.
-- Each cluster claims, at preflight, the roles its database needs with their definition
-- (attributes, memberships, a fingerprint of the password: never the password or its verifier);
-- two claims that differ are a preflight error naming both clusters. A cluster's claims go away
-- when its migration is cleaned up; a role dmf made goes with the last claim on it.
CREATE TABLE dmf.target_roles (
    instance text NOT NULL,
    role text NOT NULL,
    cluster text NOT NULL,
    spec jsonb NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, role, cluster)
);

-- Roles dmf made on a target instance (as opposed to roles that were there before it came).
CREATE TABLE dmf.target_roles_made (
    instance text NOT NULL,
    role text NOT NULL,
    PRIMARY KEY (instance, role)
);
