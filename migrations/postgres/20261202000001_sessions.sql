-- Sessions (issue 14): one row per login, with the refresh token chain it hands out.
-- A refresh token is the session's `family` (random, names the chain), its generation and a
-- secret derived from both; only the SHA-256 of the current secret is kept. `rotated_at` and
-- `earlier_rotated_at` are when the last two rotations happened (the grace period's clock).
ALTER TABLE users ADD COLUMN disabled_at timestamptz;

CREATE TABLE sessions (
    id                  uuid        PRIMARY KEY,
    user_id             uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family              bytea       NOT NULL,
    refresh_hash        bytea       NOT NULL,
    generation          bigint      NOT NULL DEFAULT 0,
    rotated_at          timestamptz,
    earlier_rotated_at  timestamptz,
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
