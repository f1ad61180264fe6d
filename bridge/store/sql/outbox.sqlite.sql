-- The outbox as SQLite writes it: claims and the sent-once records as several statements
-- in the writer's transaction (one writer: no row locks to skip).

-- name: due_messages
-- Queued messages that are due, and sending ones whose lease expired unless the caller
-- holds them: one indexed range each.
SELECT id FROM (SELECT id, next_attempt_at AS k FROM messages
                WHERE status = 'queued' AND next_attempt_at <= ?
                UNION ALL
                SELECT id, lease_until AS k FROM messages
                WHERE status = 'sending' AND lease_until <= ? AND lease_owner IS NOT ?)
ORDER BY k, id LIMIT ?

-- name: lease_messages
UPDATE messages SET status = 'sending', lease_owner = ?, lease_until = ?,
                    lease_epoch = lease_epoch + 1, updated_at = ?
WHERE id IN (SELECT value FROM json_each(?))

-- name: claimed_messages
-- The claimed rows with their mail's header block (for a bounce), the requests whose fate
-- is unknown and the claim's fencing token.
SELECT m.id, m.account, m.upstream, m.phone, m.text, m.parts, m.encoding, m.status,
       m.attempts, m.created_at, m.options, m.upstream_ids, m.last_error,
       COALESCE(ml.mail_from, ''), m.next_attempt_at, m.upstream_used, m.delivery_status,
       ml.message_id, ml.headers, m.maybe_sent, m.lease_epoch
FROM messages m LEFT JOIN mails ml ON ml.id = m.mail_id
WHERE m.id IN (SELECT value FROM json_each(?)) ORDER BY m.id

-- name: dedup_seen
SELECT seen_at FROM mail_dedup WHERE key = ?

-- name: take_dedup_key
INSERT OR REPLACE INTO mail_dedup (key, mail_id, seen_at) VALUES (?, ?, ?)

-- The claim an outcome (or an intent) names must still hold: the row is sending, leased to
-- this owner, under the same epoch (the last three parameters). A process whose lease was
-- taken over (it stalled, or lost the store for longer than the lease) cannot overwrite
-- the new holder's result.

-- name: count_intent
UPDATE messages SET maybe_sent = maybe_sent + 1, updated_at = ?
WHERE id = ? AND status = 'sending' AND lease_owner = ? AND lease_epoch = ?

-- What each outcome sets, then: one attempt more for an outcome of a request, its doubt
-- taken back from maybe_sent unless its fate is unknown, the time.

-- name: outcome_sent
UPDATE messages SET status = 'sent', upstream_used = ?, upstream_ids = ?, last_error = NULL,
                    next_poll_at = ?, lease_owner = NULL, lease_until = NULL,
                    attempts = attempts + ?, maybe_sent = max(0, maybe_sent - ?),
                    updated_at = ?
WHERE id = ? AND status = 'sending' AND lease_owner = ? AND lease_epoch = ?

-- name: outcome_queued
UPDATE messages SET status = 'queued', next_attempt_at = ?, last_error = ?,
                    lease_owner = NULL, lease_until = NULL,
                    attempts = attempts + ?, maybe_sent = max(0, maybe_sent - ?),
                    updated_at = ?
WHERE id = ? AND status = 'sending' AND lease_owner = ? AND lease_epoch = ?

-- name: outcome_failed
UPDATE messages SET status = 'failed', last_error = ?, lease_owner = NULL, lease_until = NULL,
                    attempts = attempts + ?, maybe_sent = max(0, maybe_sent - ?),
                    updated_at = ?
WHERE id = ? AND status = 'sending' AND lease_owner = ? AND lease_epoch = ?

-- name: outcome_ambiguous
UPDATE messages SET status = 'ambiguous', last_error = ?, lease_owner = NULL,
                    lease_until = NULL,
                    attempts = attempts + ?, maybe_sent = max(0, maybe_sent - ?),
                    updated_at = ?
WHERE id = ? AND status = 'sending' AND lease_owner = ? AND lease_epoch = ?

-- name: outcome_sending
-- The claim goes on with the next upstream: the lease stays.
UPDATE messages SET last_error = ?,
                    attempts = attempts + ?, maybe_sent = max(0, maybe_sent - ?),
                    updated_at = ?
WHERE id = ? AND status = 'sending' AND lease_owner = ? AND lease_epoch = ?

-- name: index_provider_id
-- Delivery reports name the provider's id; this finds the message from it.
INSERT OR REPLACE INTO provider_ids (provider_id, message_id) VALUES (?, ?)

-- name: early_reports
-- Reports kept unmatched because they came before the send was recorded, in arrival order.
SELECT id, provider_id, status, raw_status, error_code, received_at FROM delivery_reports
WHERE message_id IS NULL AND provider_id IN (SELECT value FROM json_each(?)) ORDER BY id

-- name: due_polls
SELECT id, upstream_ids, poll_count FROM messages
WHERE upstream_used = ? AND next_poll_at IS NOT NULL AND next_poll_at <= ?
ORDER BY next_poll_at LIMIT ?

-- name: poll_lease
UPDATE messages SET next_poll_at = ? WHERE id = ?

-- name: claimed_forward_jobs
SELECT id, inbound_id, kind, target, payload, attempts, deadline FROM forward_jobs
WHERE id IN (SELECT value FROM json_each(?)) AND kind IN (SELECT value FROM json_each(?))

-- name: lease_forward_job
UPDATE forward_jobs SET status = 'sending', lease_owner = ?, lease_until = ?,
                        attempts = attempts + 1
WHERE id = ?

-- name: page_size
PRAGMA page_size

-- name: write_probe
-- The readiness probe's row: that many bytes more must fit.
INSERT OR REPLACE INTO meta (key, value) VALUES ('readiness_probe', zeroblob(?))

-- name: drop_probe
DELETE FROM meta WHERE key = 'readiness_probe'
