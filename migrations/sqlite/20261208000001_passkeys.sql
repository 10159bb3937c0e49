-- SQLite variant of migrations/postgres/20261208000001 (times in integer microseconds).
ALTER TABLE users ADD COLUMN webauthn_handle BLOB;
CREATE UNIQUE INDEX users_webauthn_handle ON users (webauthn_handle);

CREATE TABLE passkeys (
    id              BLOB    PRIMARY KEY,
    user_id         BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id   BLOB    NOT NULL UNIQUE,
    credential      TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    sign_count      INTEGER NOT NULL,
    backup_eligible BOOLEAN NOT NULL,
    backed_up       BOOLEAN NOT NULL,
    created_at      INTEGER NOT NULL,
    last_used_at    INTEGER
);
CREATE INDEX passkeys_user_id ON passkeys (user_id);

CREATE TABLE webauthn_ceremonies (
    id           BLOB    PRIMARY KEY,
    purpose      TEXT    NOT NULL,
    user_id      BLOB    REFERENCES users (id) ON DELETE CASCADE,
    challenge_id BLOB,
    state        BLOB    NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX webauthn_ceremonies_expires_at ON webauthn_ceremonies (expires_at);

ALTER TABLE sessions ADD COLUMN passkey_id BLOB;
CREATE INDEX sessions_passkey_id ON sessions (passkey_id) WHERE passkey_id IS NOT NULL;
