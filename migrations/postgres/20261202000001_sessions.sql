-- Sessions (issue 14): one row per login, with the refresh token chain it hands out.
-- The refresh token is the session's `family` (random, names the chain) and a secret; only
-- SHA-256 hashes of the current and the previous secret are kept.
ALTER TABLE users ADD COLUMN disabled_at timestamptz;

CREATE TABLE sessions (
    id                  uuid        PRIMARY KEY,
    user_id             uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family              bytea       NOT NULL,
    refresh_hash        bytea       NOT NULL,
    previous_hash       bytea,
    generation          bigint      NOT NULL DEFAULT 0,
    rotated_at          timestamptz,
    created_at          timestamptz NOT NULL,
    last_used_at        timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL,
    absolute_expires_at timestamptz NOT NULL,
    revoked_at          timestamptz,
    client_ip           text,
    user_agent          text,
    CONSTRAINT sessions_family_key UNIQUE (family)
);

CREATE INDEX sessions_user_id ON sessions (user_id);
-- Pruning deletes by expiry (never later than the absolute expiry) and revocation.
CREATE INDEX sessions_expires_at ON sessions (expires_at);
CREATE INDEX sessions_revoked ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
