-- Imports (issue 25): the SHA-256 of the password hash an import brought in, as the file gave it.
-- A later `authd user import --update` of the same file then leaves alone a hash that changed
-- since only because authd re-hashed it at the first login (or the user set a new password):
-- only a different hash in the file is a change.
ALTER TABLE users ADD COLUMN imported_hash_digest bytea;
