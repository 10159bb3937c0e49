-- Passkeys (issue 24). A user's WebAuthn user handle is a random UUID of its own (the account
-- id is time-ordered and would tell an authenticator when the account was made); it is set at
-- the first registration and never changes.
ALTER TABLE users ADD COLUMN webauthn_handle uuid;
CREATE UNIQUE INDEX users_webauthn_handle ON users (webauthn_handle);

-- One row per registered passkey. `credential` is the relying party's record (public key,
-- algorithm, counter, flags) as webauthn-rs serialises it; `sign_count`, `backup_eligible` and
-- `backed_up` are copies kept in step so statements can compare and show them.
CREATE TABLE passkeys (
    id              uuid        PRIMARY KEY,
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id   bytea       NOT NULL,
    credential      text        NOT NULL,
    name            text        NOT NULL,
    sign_count      bigint      NOT NULL,
    backup_eligible boolean     NOT NULL,
    backed_up       boolean     NOT NULL,
    created_at      timestamptz NOT NULL,
    last_used_at    timestamptz,
    CONSTRAINT passkeys_credential_id_key UNIQUE (credential_id)
);
CREATE INDEX passkeys_user_id ON passkeys (user_id);

-- A ceremony under way: the challenge and policy webauthn-rs keeps between the options and the
-- browser's answer, bound to what it is for (registering for one user, a sign-in, or the
-- second step of one login challenge). Taken (deleted) by the one request that finishes it.
CREATE TABLE webauthn_ceremonies (
    id           uuid        PRIMARY KEY,
    purpose      text        NOT NULL,
    user_id      uuid        REFERENCES users (id) ON DELETE CASCADE,
    challenge_id uuid,
    state        bytea       NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX webauthn_ceremonies_expires_at ON webauthn_ceremonies (expires_at);

-- The passkey a session signed in with (alone or as the second step): removing the passkey
-- ends those sessions.
ALTER TABLE sessions ADD COLUMN passkey_id uuid;
CREATE INDEX sessions_passkey_id ON sessions (passkey_id) WHERE passkey_id IS NOT NULL;
