-- SQLite variant of migrations/postgres/20261125000002 (times in integer microseconds).
CREATE TABLE throttles (
    key          TEXT    PRIMARY KEY NOT NULL,
    failures     INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER,
    updated_at   INTEGER NOT NULL
);

CREATE TABLE security_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    outcome   TEXT    NOT NULL,
    user_id   BLOB,
    email     TEXT,
    client_ip TEXT,
    detail    TEXT
);

CREATE INDEX security_events_at ON security_events (at, id);
CREATE INDEX security_events_email_at ON security_events (email, at);
