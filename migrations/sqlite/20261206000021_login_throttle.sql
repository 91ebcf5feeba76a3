-- Per-account limits of galion-auth (issue 21, case 4). Mirrors
-- ../postgres/20261206000021_login_throttle.sql.

-- Failed logins by a hash of the normalised email (known or not, so a
-- throttled answer does not reveal whether the account exists). Rows older
-- than the throttle window are deleted as failures are recorded.
CREATE TABLE IF NOT EXISTS login_failures (
    id        BLOB PRIMARY KEY NOT NULL,
    key_hash  TEXT NOT NULL,
    failed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS login_failures_key ON login_failures (key_hash, failed_at);
CREATE INDEX IF NOT EXISTS login_failures_at ON login_failures (failed_at);

-- The per-account mail limit counts an account's recent tokens of one
-- purpose on every reset/verification request.
CREATE INDEX IF NOT EXISTS one_time_tokens_user_purpose ON one_time_tokens (user_id, purpose, created_at);
