-- What a proxy's acknowledgement proves, besides the epoch: that it drained (no transaction was
-- still open when it acknowledged a hold) and that it could log in to an announced next primary as
-- every user it has sessions for (the users it could not, with the server's reason).
ALTER TABLE dmf.proxies
    ADD COLUMN drained      boolean NOT NULL DEFAULT true,
    ADD COLUMN cannot_login text[]  NOT NULL DEFAULT '{}';
