-- SQLite variant of migrations/postgres/20261205000001 (times in integer microseconds).
CREATE TABLE kek_check (
    id          INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    check_value BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);
