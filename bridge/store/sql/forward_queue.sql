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
