-- SQLite variant of migrations/postgres/20261203000001 (times in integer microseconds).
CREATE TABLE signing_keys (
    kid            TEXT    PRIMARY KEY NOT NULL,
    algorithm      TEXT    NOT NULL,
    public_jwk     TEXT    NOT NULL,
    sealed_private BLOB    NOT NULL,
    state          TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    activated_at   INTEGER,
    retired_at     INTEGER,
    revoked_at     INTEGER,
    CONSTRAINT signing_keys_state CHECK (state IN ('next', 'current', 'retired', 'revoked'))
);

CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (state) WHERE state = 'current';
