-- SQLite variant of migrations/postgres/20261209000001.
ALTER TABLE users ADD COLUMN imported_hash_digest BLOB;
