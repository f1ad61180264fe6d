-- name: resolve_dead_letters
UPDATE forward_jobs SET status = 'resolved' WHERE status = 'dead' AND id = ANY($1::bigint[])

-- name: link_exchange
INSERT INTO provider_exchange_messages (message_id, exchange_id)
SELECT unnest($1::bigint[]), $2 ON CONFLICT DO NOTHING

-- name: health_of
-- The row lock: flushes of several processes add up, one after the other.
SELECT upstream, last_success_at, last_error_at, last_error, consecutive_failures,
       paused_until
FROM upstream_health WHERE upstream = $1 FOR UPDATE
