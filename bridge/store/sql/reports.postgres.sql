-- name: lock_provider_ids
-- Transaction locks on provider ids (namespace 2 of the two-key locks), in a fixed order
-- (no deadlock between takers), in one round trip: reports and the sends they name
-- settle one after the other.
SELECT pg_advisory_xact_lock(2, hashtext(p))
FROM unnest($1::text[]) WITH ORDINALITY AS u(p, n) ORDER BY n

-- name: report_message
-- The row lock makes concurrent reports on parts of one message settle one after the
-- other, each seeing the reports committed before it.
SELECT upstream_ids, delivery_status FROM messages WHERE id = $1 FOR UPDATE
