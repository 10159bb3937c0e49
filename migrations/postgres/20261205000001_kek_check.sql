-- The key-encryption key's check value: a value derived from keys.encryption_key (HKDF-SHA256
-- with a label of its own, never the key), written once by the first server start or
-- `authd migrate` that has the key. Every command and server compares its own key's value with
-- it before it seals or promotes a signing key, so a wrong key is refused even on an empty
-- signing_keys table. One row at most.
CREATE TABLE kek_check (
    id          smallint    PRIMARY KEY CHECK (id = 1),
    check_value bytea       NOT NULL,
    created_at  timestamptz NOT NULL
);
