-- Mail delivery state for galion-auth's sender (issue 22, item 3). Mirrors
-- ../postgres/20261207000022_mail_delivery.sql.
--
-- A row is pending while sent_at and dead_at are NULL. A sender claims it
-- by setting lease_owner/lease_until (so two instances, or an instance
-- restarted while a lease is live, never send it twice), sets sent_at once
-- the relay accepted the mail, or counts the failed attempt and schedules
-- the next one at next_attempt_at (NULL: due now); after the last attempt
-- it sets dead_at and keeps last_error for the operator.
ALTER TABLE mail_outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mail_outbox ADD COLUMN next_attempt_at TEXT;
ALTER TABLE mail_outbox ADD COLUMN lease_owner BLOB;
ALTER TABLE mail_outbox ADD COLUMN lease_until TEXT;
ALTER TABLE mail_outbox ADD COLUMN last_error TEXT;
ALTER TABLE mail_outbox ADD COLUMN dead_at TEXT;

-- The sender's scan for due rows, and the depth gauge.
CREATE INDEX IF NOT EXISTS mail_outbox_pending ON mail_outbox (created_at) WHERE sent_at IS NULL AND dead_at IS NULL;
-- The per-recipient throttle counts an address's recent deliveries.
CREATE INDEX IF NOT EXISTS mail_outbox_recipient_sent ON mail_outbox (to_email, sent_at);
