-- Revocations get a monotonic sequence number, `seq` (issue 21): readers (the
-- gateway's poll of GET /revocations?after_seq=N, galion-auth's Redis
-- publisher) tail the table by seq instead of by `revoked_at`, which is stamped
-- before the revoking transaction commits and so can be older than a cursor
-- that a reader has already passed. Mirrors
-- ../postgres/20261205000001_revocation_seq.sql.
--
-- SQLite has one writer at a time and assigns the rowid while holding the write
-- lock, so seqs commit in order: a visible row implies every lower seq is
-- visible (or was rolled back), and a reader may advance its cursor to the
-- highest seq it has seen. AUTOINCREMENT because a plain rowid reuses
-- max(rowid)+1 after the newest rows are cleaned up, which would hand a seq
-- to a new row that a reader's cursor is already past.
--
-- SQLite cannot add such a column in place: the table is rebuilt.

CREATE TABLE revoked_tokens_new (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    jti        TEXT NOT NULL UNIQUE,
    user_id    BLOB,
    expires_at TEXT NOT NULL,
    revoked_at TEXT NOT NULL
);
INSERT INTO revoked_tokens_new (jti, user_id, expires_at, revoked_at)
    SELECT jti, user_id, expires_at, revoked_at FROM revoked_tokens ORDER BY revoked_at, jti;
DROP TABLE revoked_tokens;
ALTER TABLE revoked_tokens_new RENAME TO revoked_tokens;
CREATE INDEX IF NOT EXISTS revoked_tokens_revoked_at ON revoked_tokens (revoked_at);
CREATE INDEX IF NOT EXISTS revoked_tokens_expires_at ON revoked_tokens (expires_at);
