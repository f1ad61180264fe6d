-- name: message_events_of
SELECT message_id, at, status, detail FROM message_events
WHERE message_id = ANY($1::bigint[]) ORDER BY message_id, id
