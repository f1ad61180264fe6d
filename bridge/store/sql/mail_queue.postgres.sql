-- name: claim_mails
-- Rows another process is claiming are skipped, not waited for.
WITH due AS (
    SELECT id FROM outgoing_mail
    WHERE (status = 'queued' AND next_attempt_at <= $3)
       OR (status = 'sending' AND lease_until <= $4)
    ORDER BY next_attempt_at, id LIMIT $5 FOR UPDATE SKIP LOCKED)
UPDATE outgoing_mail o SET status = 'sending', lease_owner = $1, lease_until = $2,
                           attempts = o.attempts + 1
FROM due WHERE o.id = due.id
RETURNING o.id, o.kind, o.mail_to, o.content, o.attempts, o.next_attempt_at
