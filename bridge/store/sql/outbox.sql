-- The outbox: what both dialects agree on (claims and the sent-once records that
-- PostgreSQL combines into fewer statements stay in the engines).

-- name: insert_event
INSERT INTO message_events (message_id, at, status, detail) VALUES (?, ?, ?, ?)

-- name: renew_leases
UPDATE messages SET lease_until = ? WHERE status = 'sending' AND lease_owner = ?

-- name: resolve_sent
UPDATE messages SET status = 'sent', updated_at = ? WHERE id = ? AND status = 'ambiguous'

-- name: resolve_resend
UPDATE messages SET status = 'queued', next_attempt_at = ?, maybe_sent = 0, updated_at = ?
WHERE id = ? AND status = 'ambiguous'

-- name: next_due_at
SELECT MIN(k) FROM (SELECT MIN(next_attempt_at) AS k FROM messages WHERE status = 'queued'
                    UNION ALL
                    SELECT MIN(lease_until) FROM messages WHERE status = 'sending') AS due

-- name: list_messages
-- Newest first; an outbox status (queued, sending, sent, failed, ambiguous) or a provider's
-- (delivered, undelivered, expired, rejected, unknown) narrows it, NULL leaves it open.
SELECT m.id, m.account, m.upstream, m.phone, m.text, m.parts, m.encoding, m.status,
       m.attempts, m.created_at, m.options, m.upstream_ids, m.last_error,
       COALESCE(ml.mail_from, ''), m.next_attempt_at, m.upstream_used, m.delivery_status,
       ml.message_id, NULL, m.maybe_sent, m.lease_epoch
FROM messages m LEFT JOIN mails ml ON ml.id = m.mail_id
WHERE (CAST(? AS TEXT) IS NULL OR m.status = ?)
  AND (CAST(? AS TEXT) IS NULL OR m.delivery_status = ?)
ORDER BY m.id DESC LIMIT ?

-- name: message_events
SELECT at, status, detail FROM message_events WHERE message_id = ? ORDER BY id

-- name: message_events_of
-- The ids as one JSON array: a listing may name more messages than SQLite takes
-- parameters in one statement.
SELECT message_id, at, status, detail FROM message_events
WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY message_id, id

-- name: reschedule_status_poll
UPDATE messages SET next_poll_at = ?, poll_count = poll_count + 1
WHERE id = ? AND next_poll_at IS NOT NULL

-- name: purge_dedup
DELETE FROM mail_dedup WHERE seen_at < ?

-- name: queue_stats
SELECT (SELECT COUNT(*) FROM messages WHERE status IN ('queued', 'sending')),
       (SELECT MIN(created_at) FROM messages WHERE status IN ('queued', 'sending')),
       (SELECT COUNT(*) FROM forward_jobs WHERE status IN ('queued', 'sending')),
       (SELECT COUNT(*) FROM forward_jobs WHERE status = 'dead')

-- name: insert_received_mail
INSERT INTO mails (received_at, mail_from, message_id, peer, format, headers, raw, raw_size,
                   rcpt_to)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id

-- name: insert_message
INSERT INTO messages (mail_id, account, upstream, phone, text, parts, encoding, options,
                      status, next_attempt_at, created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?) RETURNING id

-- name: insert_intent
INSERT INTO send_intents (upstream, owner, fingerprint, messages, created_at)
VALUES (?, ?, ?, ?, ?) RETURNING id

-- name: end_intent
UPDATE send_intents SET finished_at = ?, outcome = ? WHERE id = ?

-- name: attach_report
UPDATE delivery_reports SET message_id = ? WHERE id = ?
