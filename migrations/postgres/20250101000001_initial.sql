-- Galion backends schema (PostgreSQL). Mirrors ../sqlite/20250101000001_initial.sql;
-- the two files must describe the same tables and columns.
-- Native UUID, TIMESTAMPTZ, BOOLEAN and JSONB types.

-- Accounts, shared by galion-auth and galion-users.
CREATE TABLE IF NOT EXISTS users (
    id             UUID PRIMARY KEY,
    email          TEXT NOT NULL,
    name           TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    email_verified BOOLEAN NOT NULL DEFAULT FALSE,
    is_active      BOOLEAN NOT NULL DEFAULT TRUE,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    last_login_at  TIMESTAMPTZ,
    deleted_at     TIMESTAMPTZ
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
    created_at      TIMESTAMPTZ NOT NULL,
    retired_at      TIMESTAMPTZ
);

-- Opaque refresh tokens (SHA-256 of the token), grouped in rotation families.
CREATE TABLE IF NOT EXISTS refresh_tokens (
    id                UUID PRIMARY KEY,
    token_hash        TEXT NOT NULL UNIQUE,
    family_id         UUID NOT NULL,
    user_id           UUID NOT NULL REFERENCES users (id),
    access_jti        TEXT NOT NULL,
    access_expires_at TIMESTAMPTZ NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    expires_at        TIMESTAMPTZ NOT NULL,
    used_at           TIMESTAMPTZ,
    revoked_at        TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX IF NOT EXISTS refresh_tokens_user ON refresh_tokens (user_id);

-- Access-token ids revoked before their expiry (logout, reuse, delete).
CREATE TABLE IF NOT EXISTS revoked_tokens (
    jti        TEXT PRIMARY KEY NOT NULL,
    user_id    UUID,
    expires_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS revoked_tokens_revoked_at ON revoked_tokens (revoked_at);
CREATE INDEX IF NOT EXISTS revoked_tokens_expires_at ON revoked_tokens (expires_at);

-- Single-use email verification / password reset tokens (hashed).
CREATE TABLE IF NOT EXISTS one_time_tokens (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id),
    purpose    TEXT NOT NULL CHECK (purpose IN ('verify_email', 'password_reset')),
    token_hash TEXT NOT NULL UNIQUE,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL
);

-- Mail waiting for a sender process (none ships yet: mail is also logged).
CREATE TABLE IF NOT EXISTS mail_outbox (
    id         UUID PRIMARY KEY,
    to_email   TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    sent_at    TIMESTAMPTZ
);

-- Transactional outbox of domain events, drained by the relay to analytics.
CREATE TABLE IF NOT EXISTS outbox (
    id           UUID PRIMARY KEY,
    event_type   TEXT NOT NULL,
    user_id      UUID,
    service      TEXT NOT NULL,
    occurred_at  TIMESTAMPTZ NOT NULL,
    data         JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    delivered_at TIMESTAMPTZ,
    attempts     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (delivered_at, created_at);

-- Events stored by galion-analytics (idempotent by id).
CREATE TABLE IF NOT EXISTS events (
    id          UUID PRIMARY KEY,
    event_type  TEXT NOT NULL,
    user_id     UUID,
    service     TEXT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    data        JSONB NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS events_occurred ON events (occurred_at);
CREATE INDEX IF NOT EXISTS events_type_occurred ON events (event_type, occurred_at);
CREATE INDEX IF NOT EXISTS events_user_occurred ON events (user_id, occurred_at);
