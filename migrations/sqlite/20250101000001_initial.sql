-- Galion backends schema (SQLite). Mirrors ../postgres/20250101000001_initial.sql;
-- the two files must describe the same tables and columns.
-- UUIDs are stored as 16-byte BLOBs and timestamps as RFC 3339 TEXT in UTC
-- (the sqlx encodings), so text comparison orders them correctly.

-- Accounts, shared by galion-auth and galion-users.
CREATE TABLE IF NOT EXISTS users (
    id             BLOB PRIMARY KEY NOT NULL,
    email          TEXT NOT NULL,
    name           TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    email_verified INTEGER NOT NULL DEFAULT 0,
    is_active      INTEGER NOT NULL DEFAULT 1,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    last_login_at  TEXT,
    deleted_at     TEXT
);
-- A soft-deleted account frees its email for a new registration.
CREATE UNIQUE INDEX IF NOT EXISTS users_email_live ON users (email) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS users_created ON users (created_at);

-- Ed25519 signing keys; the private half is encrypted (ChaCha20-Poly1305).
CREATE TABLE IF NOT EXISTS signing_keys (
    kid             TEXT PRIMARY KEY NOT NULL,
    alg             TEXT NOT NULL,
    public_key      TEXT NOT NULL,
    private_key_enc TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    retired_at      TEXT
);

-- Opaque refresh tokens (SHA-256 of the token), grouped in rotation families.
CREATE TABLE IF NOT EXISTS refresh_tokens (
    id                BLOB PRIMARY KEY NOT NULL,
    token_hash        TEXT NOT NULL UNIQUE,
    family_id         BLOB NOT NULL,
    user_id           BLOB NOT NULL REFERENCES users (id),
    access_jti        TEXT NOT NULL,
    access_expires_at TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    expires_at        TEXT NOT NULL,
    used_at           TEXT,
    revoked_at        TEXT
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX IF NOT EXISTS refresh_tokens_user ON refresh_tokens (user_id);

-- Access-token ids revoked before their expiry (logout, reuse, delete).
CREATE TABLE IF NOT EXISTS revoked_tokens (
    jti        TEXT PRIMARY KEY NOT NULL,
    user_id    BLOB,
    expires_at TEXT NOT NULL,
    revoked_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS revoked_tokens_revoked_at ON revoked_tokens (revoked_at);
CREATE INDEX IF NOT EXISTS revoked_tokens_expires_at ON revoked_tokens (expires_at);

-- Single-use email verification / password reset tokens (hashed).
CREATE TABLE IF NOT EXISTS one_time_tokens (
    id         BLOB PRIMARY KEY NOT NULL,
    user_id    BLOB NOT NULL REFERENCES users (id),
    purpose    TEXT NOT NULL CHECK (purpose IN ('verify_email', 'password_reset')),
    token_hash TEXT NOT NULL UNIQUE,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    created_at TEXT NOT NULL
);

-- Mail waiting for a sender process (none ships yet: mail is also logged).
CREATE TABLE IF NOT EXISTS mail_outbox (
    id         BLOB PRIMARY KEY NOT NULL,
    to_email   TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    sent_at    TEXT
);

-- Transactional outbox of domain events, drained by the relay to analytics.
CREATE TABLE IF NOT EXISTS outbox (
    id           BLOB PRIMARY KEY NOT NULL,
    event_type   TEXT NOT NULL,
    user_id      BLOB,
    service      TEXT NOT NULL,
    occurred_at  TEXT NOT NULL,
    data         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    delivered_at TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (delivered_at, created_at);

-- Events stored by galion-analytics (idempotent by id).
CREATE TABLE IF NOT EXISTS events (
    id          BLOB PRIMARY KEY NOT NULL,
    event_type  TEXT NOT NULL,
    user_id     BLOB,
    service     TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    data        TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_occurred ON events (occurred_at);
CREATE INDEX IF NOT EXISTS events_type_occurred ON events (event_type, occurred_at);
CREATE INDEX IF NOT EXISTS events_user_occurred ON events (user_id, occurred_at);
