-- Coordination of the processes of a cluster: named leases, who is alive, the store's id
-- and small settings. Both dialects agree on all of it.

-- name: acquire_lease
-- Free, expired, or already the caller's: one statement, so of two processes asking at
-- once exactly one gets it (a row changed: taken).
INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE leases.owner = excluded.owner OR leases.expires_at <= ?

-- name: release_lease
DELETE FROM leases WHERE name = ? AND owner = ?

-- name: mark_alive
INSERT INTO processes (owner, seen_at) VALUES (?, ?)
ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at

-- name: forget_silent
DELETE FROM processes WHERE seen_at < ?

-- name: count_alive
SELECT COUNT(*) FROM processes

-- name: lease_owners_messages
SELECT DISTINCT lease_owner FROM messages WHERE status = 'sending'

-- name: lease_owners_forward_jobs
SELECT DISTINCT lease_owner FROM forward_jobs WHERE status = 'sending'

-- name: lease_owners_outgoing_mail
SELECT DISTINCT lease_owner FROM outgoing_mail WHERE status = 'sending'

-- name: end_leases_messages
UPDATE messages SET lease_until = 0 WHERE status = 'sending' AND lease_owner = ?

-- name: end_leases_forward_jobs
UPDATE forward_jobs SET lease_until = 0 WHERE status = 'sending' AND lease_owner = ?

-- name: end_leases_outgoing_mail
UPDATE outgoing_mail SET lease_until = 0 WHERE status = 'sending' AND lease_owner = ?

-- name: make_bridge_id
-- Processes starting together agree on it: the first insert wins.
INSERT INTO meta (key, value) VALUES ('bridge_id', ?) ON CONFLICT (key) DO NOTHING

-- name: get_meta
SELECT value FROM meta WHERE key = ?

-- name: set_meta
INSERT INTO meta (key, value) VALUES (?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- name: write_probe_row
-- The readiness probe's own row (probes never wait on locks).
INSERT INTO meta (key, value) VALUES (?, '')

-- name: drop_probe_row
DELETE FROM meta WHERE key = ?
