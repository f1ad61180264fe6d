-- Forwarding jobs of inbound SMS.

-- name: list_forward_jobs
SELECT id, inbound_id, kind, target, status, attempts, last_error, created_at
FROM forward_jobs ORDER BY id DESC LIMIT ?

-- name: list_forward_jobs_by_status
SELECT id, inbound_id, kind, target, status, attempts, last_error, created_at
FROM forward_jobs WHERE status = ? ORDER BY id DESC LIMIT ?

-- name: redeliver_all
UPDATE forward_jobs SET status = 'queued', next_attempt_at = ?, deadline = ?, attempts = 0
WHERE status = 'dead'

-- name: redeliver
UPDATE forward_jobs SET status = 'queued', next_attempt_at = ?, deadline = ?, attempts = 0
WHERE status = 'dead' AND id IN (SELECT value FROM json_each(?))

-- name: job_thread
SELECT thread_root FROM forward_jobs WHERE id = ?

-- name: join_thread
-- The thread goes on while its last SMS is less than the idle time older than this one;
-- else this mail starts a new one. One statement: processes deciding for one thread at
-- once wait on its row.
INSERT INTO mail_threads (thread_key, root_message_id, last_activity) VALUES (?, ?, ?)
ON CONFLICT (thread_key) DO UPDATE SET
    root_message_id = CASE WHEN excluded.last_activity - mail_threads.last_activity < ?
                           THEN mail_threads.root_message_id
                           ELSE excluded.root_message_id END,
    last_activity = max(mail_threads.last_activity, excluded.last_activity)
RETURNING root_message_id

-- name: set_thread_root
UPDATE forward_jobs SET thread_root = ? WHERE id = ?

-- Outcomes are recorded only by the lease holder: a worker whose lease expired and was
-- taken over must not overwrite the new holder's result (e.g. put a delivered job back).

-- name: forward_outcome
-- The job's new status from the outcome (delivered, retry: queued again, dead), the next
-- attempt (a retry's; NULL keeps it) and the error (NULL for a delivery).
UPDATE forward_jobs
SET status = CASE CAST(? AS TEXT) WHEN 'delivered' THEN 'delivered'
                                  WHEN 'retry' THEN 'queued' ELSE 'dead' END,
    next_attempt_at = COALESCE(?, next_attempt_at), last_error = ?, lease_until = NULL
WHERE id = ? AND status = 'sending' AND lease_owner = ?

-- name: insert_attempt
INSERT INTO forward_attempts (job_id, at, outcome, detail) VALUES (?, ?, ?, ?)

-- name: prune_job_attempts
-- The job keeps its last attempts (the count is the parameter).
DELETE FROM forward_attempts
WHERE job_id = ? AND id <= (SELECT id FROM forward_attempts WHERE job_id = ?
                            ORDER BY id DESC LIMIT 1 OFFSET ?)
