-- Inbound SMS and the answers of short-code hits.

-- name: inbound_by_key
SELECT id, state, response_status, response_body, response_type, received_at, content_hash
FROM inbound WHERE source = ? AND dedup_key = ?

-- name: inbound_by_content
-- A message without sms_id: the same content within the window counts as a repeat.
SELECT id, state, response_status, response_body, response_type, received_at, content_hash
FROM inbound
WHERE source = ? AND content_hash = ? AND sms_id IS NULL AND received_at >= ?
ORDER BY id DESC LIMIT 1

-- name: answer_inbound
-- Unless an answer was stored first (a concurrent completion waits for the row lock, then
-- finds the state 'answered').
UPDATE inbound SET state = 'answered', response_status = ?, response_body = ?,
                   response_type = ?, script_error = ?
WHERE id = ? AND state = 'pending'

-- name: inbound_answer
SELECT response_status, response_body, response_type FROM inbound WHERE id = ?

-- name: claim_inbound_answer
UPDATE inbound SET answer_until = ?
WHERE id = ? AND state = 'pending' AND COALESCE(answer_until, received_at + ?) <= ?

-- name: list_inbound
SELECT i.id, i.source, i.kind, i.sms_id, i.phone, i.recipient, i.text, i.charset_error,
       i.state, i.script_error, i.received_at,
       (SELECT COUNT(*) FROM forward_jobs f WHERE f.inbound_id = i.id),
       (SELECT COUNT(*) FROM forward_jobs f WHERE f.inbound_id = i.id
                                              AND f.status = 'delivered')
FROM inbound i ORDER BY i.id DESC LIMIT ?

-- name: insert_inbound_row
INSERT INTO inbound (source, kind, dedup_key, sms_id, content_hash, phone, recipient, text,
                     raw, charset, charset_error, state, response_status, response_body,
                     response_type, received_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id

-- name: insert_forward_job
INSERT INTO forward_jobs (inbound_id, kind, target, payload, status, next_attempt_at,
                          created_at, deadline)
VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)
