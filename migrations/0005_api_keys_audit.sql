-- API keys with roles, and an append-only audit log of state changes.

-- A key is shown once, as lbv_<prefix>_<secret>: <prefix> (8 hex characters, stored in clear)
-- finds the row, <secret> (32 random bytes, base64url) proves possession. Only
-- HMAC-SHA256(pepper, secret) is stored. Why a keyed hash and not a slow KDF (scrypt, argon2):
-- a slow KDF protects low-entropy passwords against guessing; a 256-bit random secret cannot be
-- guessed whatever the hash, so a KDF would only cost CPU on every request. The pepper (from
-- LABEVAL_KEY_PEPPER, else a file made once with mode 0600 in the data directory, never in the
-- repository or in this database) means a copy of this table alone cannot even test a candidate
-- key, and a bare SHA-256 of the key is never stored.
CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role         text NOT NULL CHECK (role IN ('admin', 'officer', 'grader', 'feed', 'viewer')),
    prefix       text NOT NULL UNIQUE CHECK (prefix ~ '^[0-9a-f]{8}$'),
    secret_hmac  bytea NOT NULL CHECK (length(secret_hmac) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- One row per state change: an API request that changed (or tried to change) something, or a
-- CLI command. Never updated, never deleted: the triggers below refuse it (only a database role
-- allowed to disable triggers could get round them).
CREATE TABLE audit_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- 'key:<id>:<name>' for an API key, 'cli:<login>' for the command line, 'scheduler'.
    actor          text NOT NULL,
    -- Method and route template (e.g. 'POST /api/v1/overrides/{override_id}/revoke') or the CLI
    -- command (e.g. 'apikey.create', 'grade').
    action         text NOT NULL,
    -- What it acted on: the path parameters, or the CLI's object ids.
    target         jsonb NOT NULL DEFAULT '{}',
    -- SHA-256 (hex) of the request body as received; null when there was none.
    payload_digest text CHECK (payload_digest ~ '^[0-9a-f]{64}$'),
    request_id     text,
    -- HTTP status of the answer; null for the CLI.
    status         integer,
    at             timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_action ON audit_log (action, id);

-- The refusal function of 0004 serves every append-only table.
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_append_only_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_append_only_change();
