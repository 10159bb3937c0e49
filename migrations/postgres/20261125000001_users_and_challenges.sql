-- Accounts. Emails are stored trimmed and lower-cased, so one unique index makes them case-insensitive.
CREATE TABLE users (
    id                 uuid        PRIMARY KEY,
    email              text        NOT NULL,
    password_hash      text        NOT NULL,
    first_name         text,
    last_name          text,
    two_factor_enabled boolean     NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email),
    CONSTRAINT users_email_normalised CHECK (email = lower(btrim(email)))
);

CREATE INDEX users_created_at_id ON users (created_at, id);

-- One row per emailed code. The code itself is never stored: only an HMAC keyed by a server secret.
CREATE TABLE otp_challenges (
    id          uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash   bytea       NOT NULL,
    attempts    integer     NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL,
    consumed_at timestamptz,
    retired_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX otp_challenges_user_open ON otp_challenges (user_id)
    WHERE consumed_at IS NULL AND retired_at IS NULL;
