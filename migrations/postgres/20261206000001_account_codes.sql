-- Proof of the address and the way back in (issue 22): when the account's address was last
-- proven, and the codes emailed to prove an address, reset a password or confirm a new address.
ALTER TABLE users ADD COLUMN email_verified_at timestamptz;

-- One row per emailed code and link. Neither is stored: the code as an HMAC bound to the row's
-- id (like a login code), the link's token as an HMAC of its own (looked up by it). `email` is
-- the address the message went to: the account's (verify_email, reset_password) or the new one
-- (change_email). A newer code of one purpose retires the older ones.
CREATE TABLE account_codes (
    id          uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose     text        NOT NULL,
    email       text        NOT NULL,
    code_hash   bytea       NOT NULL,
    token_hash  bytea       NOT NULL,
    attempts    integer     NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL,
    consumed_at timestamptz,
    retired_at  timestamptz,
    created_at  timestamptz NOT NULL,
    CONSTRAINT account_codes_token_hash_key UNIQUE (token_hash),
    CONSTRAINT account_codes_purpose CHECK (purpose IN ('verify_email', 'reset_password', 'change_email'))
);

-- Not partial: deleting a user (ON DELETE CASCADE) finds its codes through it too.
CREATE INDEX account_codes_user_purpose ON account_codes (user_id, purpose);
CREATE INDEX account_codes_expires_at ON account_codes (expires_at);
