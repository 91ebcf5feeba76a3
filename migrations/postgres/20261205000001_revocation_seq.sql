-- Revocations get a monotonic sequence number, `seq` (issue 21): readers (the
-- gateway's poll of GET /revocations?after_seq=N, galion-auth's Redis
-- publisher) tail the table by seq instead of by `revoked_at`, which is stamped
-- before the revoking transaction commits and so can be older than a cursor
-- that a reader has already passed.
--
-- A PostgreSQL sequence alone is not enough: nextval() is not transactional,
-- so a transaction could take seq 5, another take seq 6 and commit first, a
-- reader see 6 and move its cursor past 5 before 5 commits. The trigger below
-- takes a transaction-level advisory lock *before* drawing the number, and that
-- lock is only released once the transaction's commit is visible. So any row
-- that is visible implies every row with a lower seq is visible too (or was
-- rolled back): a reader may advance its cursor to the highest seq it has seen.
-- Cost: transactions that revoke tokens serialise from their revocation to
-- their commit. Revocations are rare (logout, refresh reuse, delete,
-- deactivation, password reset) and those transactions short, and they take
-- no row lock after the revocation that another revoker takes before it, so
-- this neither slows logins nor deadlocks. An advisory lock rather than
-- LOCK TABLE: two inserters each holding ROW EXCLUSIVE and upgrading would
-- deadlock, and readers and the cleanup must not wait at all. The two-key form
-- keeps it out of the single bigint key space sqlx's migrator locks in;
-- 1197566057 is "Gali" in ASCII, 1 is this lock's number.

CREATE SEQUENCE IF NOT EXISTS revoked_tokens_seq_seq;

-- Existing rows are numbered by the volatile default (the table is rewritten);
-- from then on only the trigger assigns numbers, so an insert that somehow
-- bypassed it fails on NOT NULL instead of drawing a number outside the lock.
ALTER TABLE revoked_tokens
    ADD COLUMN IF NOT EXISTS seq BIGINT NOT NULL DEFAULT nextval('revoked_tokens_seq_seq');
ALTER TABLE revoked_tokens ALTER COLUMN seq DROP DEFAULT;
ALTER SEQUENCE revoked_tokens_seq_seq OWNED BY revoked_tokens.seq;
CREATE UNIQUE INDEX IF NOT EXISTS revoked_tokens_seq_key ON revoked_tokens (seq);

CREATE OR REPLACE FUNCTION revoked_tokens_assign_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1197566057, 1);
    NEW.seq := nextval('revoked_tokens_seq_seq');
    RETURN NEW;
END
$$;

CREATE TRIGGER revoked_tokens_assign_seq
    BEFORE INSERT ON revoked_tokens
    FOR EACH ROW EXECUTE FUNCTION revoked_tokens_assign_seq();
