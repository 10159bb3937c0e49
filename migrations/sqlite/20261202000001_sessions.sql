-- SQLite variant of migrations/postgres/20261202000001 (times in integer microseconds, UUIDs
-- and byte strings as blobs).
ALTER TABLE users ADD COLUMN disabled_at INTEGER;

CREATE TABLE sessions (
    id                  BLOB    PRIMARY KEY NOT NULL,
    user_id             BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family              BLOB    NOT NULL,
    refresh_hash        BLOB    NOT NULL,
    generation          INTEGER NOT NULL DEFAULT 0,
    rotated_at          INTEGER,
    earlier_rotated_at  INTEGER,
    created_at          INTEGER NOT NULL,
    last_used_at        INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    absolute_expires_at INTEGER NOT NULL,
    revoked_at          INTEGER,
    client_ip           TEXT,
    user_agent          TEXT,
    CONSTRAINT sessions_family_key UNIQUE (family)
);

CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);
CREATE INDEX sessions_revoked ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
