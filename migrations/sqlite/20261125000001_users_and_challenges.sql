-- SQLite variant of migrations/postgres: same tables and rules. UUIDs are 16-byte blobs,
-- times are integer microseconds since the Unix epoch (UTC), so comparisons are numeric.
CREATE TABLE users (
    id                 BLOB    PRIMARY KEY NOT NULL,
    email              TEXT    NOT NULL,
    password_hash      TEXT    NOT NULL,
    first_name         TEXT,
    last_name          TEXT,
    two_factor_enabled INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email),
    CONSTRAINT users_email_normalised CHECK (email = lower(trim(email)))
);

CREATE INDEX users_created_at_id ON users (created_at, id);

CREATE TABLE otp_challenges (
    id          BLOB    PRIMARY KEY NOT NULL,
    user_id     BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash   BLOB    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    expires_at  INTEGER NOT NULL,
    consumed_at INTEGER,
    retired_at  INTEGER,
    created_at  INTEGER NOT NULL
);

CREATE INDEX otp_challenges_user_open ON otp_challenges (user_id)
    WHERE consumed_at IS NULL AND retired_at IS NULL;
