-- name: message_events_of
SELECT message_id, at, status, detail FROM message_events
WHERE message_id = ANY($1::bigint[]) ORDER BY message_id, id

-- name: claim_messages
-- Queued messages that are due, and sending ones whose lease expired unless the caller
-- holds them ($3); rows another instance is claiming are skipped, not waited for. Each
-- claim raises the message's fencing token.
WITH due AS (
    SELECT id FROM messages
    WHERE (status = 'queued' AND next_attempt_at <= $1)
       OR (status = 'sending' AND lease_until <= $1 AND lease_owner IS DISTINCT FROM $3)
    ORDER BY CASE WHEN status = 'queued' THEN next_attempt_at ELSE lease_until END, id
    LIMIT $2 FOR UPDATE SKIP LOCKED),
claimed AS (
    UPDATE messages m SET status = 'sending', lease_owner = $3, lease_until = $4,
                          lease_epoch = m.lease_epoch + 1, updated_at = $1
    FROM due WHERE m.id = due.id RETURNING m.*)
SELECT m.id, m.account, m.upstream, m.phone, m.text, m.parts, m.encoding, m.status,
       m.attempts, m.created_at, m.options, m.upstream_ids, m.last_error,
       COALESCE(ml.mail_from, ''), m.next_attempt_at, m.upstream_used, m.delivery_status,
       ml.message_id, ml.headers, m.maybe_sent, m.lease_epoch
FROM claimed m LEFT JOIN mails ml ON ml.id = m.mail_id ORDER BY m.id

-- name: claim_status_polls
WITH due AS (
    SELECT id, next_poll_at FROM messages
    WHERE upstream_used = $1 AND next_poll_at IS NOT NULL AND next_poll_at <= $2
    ORDER BY next_poll_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
UPDATE messages m SET next_poll_at = $4 FROM due WHERE m.id = due.id
RETURNING m.id, m.upstream_ids, m.poll_count, due.next_poll_at

-- A mail whose v2 answer is queued with its message ids (not combined with others):

-- name: next_mail_id
SELECT nextval(pg_get_serial_sequence('mails', 'id'))

-- name: take_key_within_window
-- A concurrent transaction inserting the same key makes this wait for its outcome.
INSERT INTO mail_dedup (key, mail_id, seen_at) VALUES ($1, $2, $3)
ON CONFLICT (key) DO UPDATE SET mail_id = EXCLUDED.mail_id, seen_at = EXCLUDED.seen_at
WHERE mail_dedup.seen_at < $4
RETURNING TRUE

-- name: insert_mail_with_id
INSERT INTO mails (id, received_at, mail_from, message_id, peer, format, headers, raw,
                   raw_size, rcpt_to)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)

-- name: insert_queued_message
WITH m AS (
    INSERT INTO messages (mail_id, account, upstream, phone, text, parts, encoding, options,
                          status, next_attempt_at, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $9, $10, $10) RETURNING id)
INSERT INTO message_events (message_id, at, status)
SELECT id, $10, 'queued' FROM m RETURNING message_id
