-- Failure counters shared by every instance: "login:<email>" (password step, kept for unknown
-- addresses too, so a lock reveals nothing) and "otp:<user id>" (second step, across challenges).
CREATE TABLE throttles (
    key          text        PRIMARY KEY,
    failures     integer     NOT NULL DEFAULT 0,
    locked_until timestamptz,
    updated_at   timestamptz NOT NULL
);

-- Security events, append-only. No foreign key: events outlive the accounts they mention.
CREATE TABLE security_events (
    id        bigserial   PRIMARY KEY,
    at        timestamptz NOT NULL,
    kind      text        NOT NULL,
    outcome   text        NOT NULL,
    user_id   uuid,
    email     text,
    client_ip text,
    detail    text
);

CREATE INDEX security_events_at ON security_events (at, id);
CREATE INDEX security_events_email_at ON security_events (email, at);
