-- People who sign in to the officers' pages, their sessions, and the sign-in attempts that the
-- rate limit counts. Machines use API keys (0005); people use a username and a password.

CREATE TABLE users (
    user_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Compared case-insensitively: "Zhang.Wei" and "zhang.wei" are one person.
    username      text NOT NULL CHECK (username ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{1,63}$'),
    display_name  text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    role          text NOT NULL CHECK (role IN ('admin', 'officer', 'grader', 'feed', 'viewer')),
    -- An argon2id PHC string ($argon2id$v=19$m=…,t=…,p=…$salt$hash): parameters travel with the
    -- hash, so raising them later re-hashes each password at its owner's next sign-in.
    password_hash text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);
CREATE UNIQUE INDEX users_username ON users (lower(username));

-- A session is a random 256-bit token in an HttpOnly cookie; only its SHA-256 is stored, so a
-- copy of this table cannot be replayed as a cookie. Kept in the database (not in one process)
-- so that any replica behind a load balancer serves any signed-in officer.
CREATE TABLE web_sessions (
    token_sha256 bytea PRIMARY KEY CHECK (length(token_sha256) = 32),
    user_id      bigint NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Idle expiry, pushed forward while the officer is active; never beyond absolute_expiry.
    expires_at   timestamptz NOT NULL,
    absolute_expiry timestamptz NOT NULL,
    CHECK (expires_at <= absolute_expiry)
);
CREATE INDEX web_sessions_user ON web_sessions (user_id);
CREATE INDEX web_sessions_expiry ON web_sessions (absolute_expiry);

-- Failed (and successful) sign-ins, for the rate limit by username and by client address.
-- Rows older than the longest window are deleted as new attempts arrive.
CREATE TABLE signin_attempts (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username  text NOT NULL,
    client    text NOT NULL,
    succeeded boolean NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX signin_attempts_username ON signin_attempts (lower(username), at);
CREATE INDEX signin_attempts_client ON signin_attempts (client, at);
