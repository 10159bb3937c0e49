-- SQLite variant of migrations/postgres/20261206000001 (times in integer microseconds).
ALTER TABLE users ADD COLUMN email_verified_at INTEGER;

CREATE TABLE account_codes (
    id          BLOB    PRIMARY KEY NOT NULL,
    user_id     BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose     TEXT    NOT NULL,
    email       TEXT    NOT NULL,
    code_hash   BLOB    NOT NULL,
    token_hash  BLOB    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    expires_at  INTEGER NOT NULL,
    consumed_at INTEGER,
    retired_at  INTEGER,
    created_at  INTEGER NOT NULL,
    CONSTRAINT account_codes_token_hash_key UNIQUE (token_hash),
    CONSTRAINT account_codes_purpose CHECK (purpose IN ('verify_email', 'reset_password', 'change_email'))
);

-- Not partial: deleting a user (ON DELETE CASCADE) finds its codes through it too.
CREATE INDEX account_codes_user_purpose ON account_codes (user_id, purpose);
CREATE INDEX account_codes_expires_at ON account_codes (expires_at);
