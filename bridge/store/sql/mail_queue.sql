-- Mails the bridge sends itself (replies, bounces).

-- name: insert_mail
INSERT INTO outgoing_mail (kind, mail_to, content, status, next_attempt_at, created_at)
VALUES (?, ?, ?, 'queued', ?, ?)

-- name: mail_done
-- Only the lease holder's outcome counts.
UPDATE outgoing_mail SET status = 'sent', lease_until = NULL, last_error = NULL
WHERE id = ? AND status = 'sending' AND lease_owner = ?

-- name: mail_failed
UPDATE outgoing_mail SET status = 'failed', last_error = ?, lease_until = NULL
WHERE id = ? AND status = 'sending' AND lease_owner = ?

-- name: mail_requeued
UPDATE outgoing_mail SET status = 'queued', next_attempt_at = ?, last_error = ?,
                         lease_until = NULL
WHERE id = ? AND status = 'sending' AND lease_owner = ?

-- name: list_mails
SELECT id, kind, mail_to, status, attempts, last_error, created_at, content
FROM outgoing_mail ORDER BY id DESC LIMIT ?

-- name: claim_mails
-- Due mails and those whose lease ran out, leased to the caller; the rows come back in no
-- particular order (sorted by the caller).
UPDATE outgoing_mail SET status = 'sending', lease_owner = ?, lease_until = ?,
                         attempts = attempts + 1
WHERE id IN (SELECT id FROM outgoing_mail
             WHERE (status = 'queued' AND next_attempt_at <= ?)
                OR (status = 'sending' AND lease_until <= ?)
             ORDER BY next_attempt_at, id LIMIT ?)
RETURNING id, kind, mail_to, content, attempts, next_attempt_at
