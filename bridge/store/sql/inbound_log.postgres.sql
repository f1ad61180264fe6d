-- name: lock_inbound_content
-- No unique key to conflict on for a message without sms_id: the window check and the
-- insert run under a transaction lock on (source, content) (namespace 1 of the two-key
-- locks), so instances cannot both miss each other's row.
SELECT pg_advisory_xact_lock(1, hashtext($1))
