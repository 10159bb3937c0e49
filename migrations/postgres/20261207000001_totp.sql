-- Authenticator apps and recovery codes (issue 23). The TOTP secret is sealed under the
-- key-encryption key (AES-256-GCM, the user's id as associated data), never stored in clear;
-- `totp_last_step` is the last time step a code was accepted for, so no code works twice.
-- An enrolment waits in `totp_pending` until its first code confirms it (or it expires).
ALTER TABLE users ADD COLUMN totp_secret bytea;
ALTER TABLE users ADD COLUMN totp_last_step bigint;
ALTER TABLE users ADD COLUMN totp_pending bytea;
ALTER TABLE users ADD COLUMN totp_pending_expires_at timestamptz;

-- Recovery codes: only their keyed hashes, each usable once.
CREATE TABLE recovery_codes (
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  bytea       NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, code_hash)
);
