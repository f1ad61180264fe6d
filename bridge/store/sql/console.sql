-- The operators' console and the admin API (searches build their WHERE at run time, see
-- bridge/store/roles/console.py).

-- name: message_trace
SELECT m.id, m.account, m.upstream, m.phone, m.text, m.parts, m.encoding, m.status,
       m.attempts, m.created_at, m.options, m.upstream_ids, m.last_error,
       COALESCE(ml.mail_from, ''), m.next_attempt_at, m.upstream_used, m.delivery_status,
       ml.message_id, m.mail_id, m.delivery_detail, m.updated_at
FROM messages m LEFT JOIN mails ml ON ml.id = m.mail_id WHERE m.id = ?

-- name: trace_mail
SELECT id, received_at, mail_from, message_id, peer, format, headers, raw, raw_size, rcpt_to
FROM mails WHERE id = ?

-- name: trace_siblings
SELECT id, phone, status FROM messages WHERE mail_id = ? AND id != ? ORDER BY id LIMIT 100

-- name: trace_reports
SELECT id, source, provider_id, message_id, status, raw_status, error_code, received_at,
       reported_at
FROM delivery_reports WHERE message_id = ? ORDER BY id

-- name: trace_exchanges
SELECT e.id, e.at, e.upstream, e.method, e.url, e.request, e.status, e.response, e.error,
       e.duration
FROM provider_exchange_messages x JOIN provider_exchanges e ON e.id = x.exchange_id
WHERE x.message_id = ? ORDER BY e.id

-- name: trace_bounce
-- A bounce is queued in the transaction that records the failure, with the same time:
-- that time and the sender find it.
SELECT id, kind, mail_to, status, attempts, last_error, created_at, content
FROM outgoing_mail WHERE kind = 'bounce' AND created_at = ? AND mail_to = ?
ORDER BY id LIMIT 1

-- name: inbound_detail
SELECT id, source, kind, sms_id, phone, recipient, text, charset, charset_error, state,
       script_error, received_at, raw, response_status, response_body, response_type
FROM inbound WHERE id = ?

-- name: inbound_forwards
SELECT id, inbound_id, kind, target, status, attempts, last_error, created_at,
       next_attempt_at, deadline
FROM forward_jobs WHERE inbound_id = ? ORDER BY id

-- name: inbound_attempts
SELECT a.job_id, a.at, a.outcome, a.detail
FROM forward_attempts a JOIN forward_jobs f ON f.id = a.job_id
WHERE f.inbound_id = ? ORDER BY a.id

-- name: resolve_dead_letters
UPDATE forward_jobs SET status = 'resolved'
WHERE status = 'dead' AND id IN (SELECT value FROM json_each(?))

-- name: count_by_status
SELECT status, COUNT(*) FROM messages GROUP BY status

-- name: count_delivery_unknown
SELECT COUNT(*) FROM messages WHERE delivery_status = 'unknown'

-- name: sent_since
SELECT at FROM message_events WHERE status = 'sent' AND at >= ?

-- name: inbound_page
-- Newest first, below an id (none: from the newest).
SELECT id, received_at FROM inbound WHERE (CAST(? AS BIGINT) IS NULL OR id < ?)
ORDER BY id DESC LIMIT 2000

-- name: count_forwards
SELECT status, COUNT(*) FROM forward_jobs WHERE status IN ('queued', 'sending', 'dead')
GROUP BY status

-- name: insert_exchange
INSERT INTO provider_exchanges (at, upstream, method, url, request, status, response, error,
                                duration)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id

-- name: link_exchange
INSERT INTO provider_exchange_messages (message_id, exchange_id)
SELECT j.value, x.id FROM json_each(?) AS j, (SELECT ? AS id) AS x WHERE true
ON CONFLICT DO NOTHING

-- name: ensure_health
INSERT INTO upstream_health (upstream) VALUES (?) ON CONFLICT (upstream) DO NOTHING

-- name: health_of
SELECT upstream, last_success_at, last_error_at, last_error, consecutive_failures,
       paused_until
FROM upstream_health WHERE upstream = ?

-- name: update_health
UPDATE upstream_health SET last_success_at = ?, last_error_at = ?, last_error = ?,
                           consecutive_failures = ?, paused_until = ?
WHERE upstream = ?

-- name: upstream_health
SELECT upstream, last_success_at, last_error_at, last_error, consecutive_failures,
       paused_until
FROM upstream_health ORDER BY upstream

-- name: prune_raw_mails
UPDATE mails SET raw = NULL WHERE raw IS NOT NULL AND received_at < ?

-- name: prune_exchange_links
DELETE FROM provider_exchange_messages
WHERE exchange_id IN (SELECT id FROM provider_exchanges WHERE at < ?)

-- name: prune_exchanges
DELETE FROM provider_exchanges WHERE at < ?

-- name: prune_attempts
DELETE FROM forward_attempts WHERE at < ?

-- name: prune_signed_out
-- Signed-out console sessions (meta "console_signed_out:N"), once they would have
-- expired anyway.
DELETE FROM meta WHERE key LIKE 'console_signed_out:%'
                   AND CAST(value AS DOUBLE PRECISION) < ?

-- name: insert_audit
INSERT INTO audit_log (at, who, via, action, target, detail, remote)
VALUES (?, ?, ?, ?, ?, ?, ?)

-- name: list_audit
SELECT id, at, who, via, action, target, detail, remote FROM audit_log
WHERE (CAST(? AS BIGINT) IS NULL OR id < ?) ORDER BY id DESC LIMIT ?
