-- Signing keys (issue 15): every instance on the database signs and verifies with this set.
-- The private half is sealed (AES-256-GCM under keys.encryption_key); the public half is the
-- JWK the JWKS publishes. States: next (published, not signing), current (signs; at most one,
-- which the partial unique index enforces), retired (published until its tokens expire),
-- revoked (never accepted again).
CREATE TABLE signing_keys (
    kid            text        PRIMARY KEY,
    algorithm      text        NOT NULL,
    public_jwk     text        NOT NULL,
    sealed_private bytea       NOT NULL,
    state          text        NOT NULL,
    created_at     timestamptz NOT NULL,
    activated_at   timestamptz,
    retired_at     timestamptz,
    revoked_at     timestamptz,
    CONSTRAINT signing_keys_state CHECK (state IN ('next', 'current', 'retired', 'revoked'))
);

CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (state) WHERE state = 'current';
