-- Delivery reports and the message status they settle.

-- name: lock_provider_ids
-- One writer at a time: nothing to lock (PostgreSQL locks the ids).
SELECT ?

-- name: provider_message
SELECT message_id FROM provider_ids WHERE provider_id = ?

-- name: insert_report
INSERT INTO delivery_reports (source, provider_id, message_id, status, raw_status,
                              error_code, received_at, reported_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id

-- name: report_message
SELECT upstream_ids, delivery_status FROM messages WHERE id = ?

-- name: message_reports
SELECT id, provider_id, status, reported_at FROM delivery_reports
WHERE message_id = ? ORDER BY id

-- name: settle_message
UPDATE messages SET delivery_status = ?,
                    delivery_detail = CASE WHEN ? THEN ? ELSE delivery_detail END,
                    next_poll_at = CASE WHEN ? THEN NULL ELSE next_poll_at END
WHERE id = ?

-- name: list_reports
SELECT id, source, provider_id, message_id, status, raw_status, error_code, received_at,
       reported_at
FROM delivery_reports ORDER BY id DESC LIMIT ?

-- name: list_unmatched_reports
SELECT id, source, provider_id, message_id, status, raw_status, error_code, received_at,
       reported_at
FROM delivery_reports WHERE message_id IS NULL ORDER BY id DESC LIMIT ?
