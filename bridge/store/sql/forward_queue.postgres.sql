-- name: redeliver
UPDATE forward_jobs SET status = 'queued', next_attempt_at = $1, deadline = $2, attempts = 0
WHERE status = 'dead' AND id = ANY($3::bigint[])

-- name: job_thread
-- The job's row lock: a second attempt of the same job (its lease taken over) waits here,
-- then finds the decision made.
SELECT thread_root FROM forward_jobs WHERE id = $1 FOR UPDATE

-- name: join_thread
INSERT INTO mail_threads (thread_key, root_message_id, last_activity) VALUES ($1, $2, $3)
ON CONFLICT (thread_key) DO UPDATE SET
    root_message_id = CASE WHEN EXCLUDED.last_activity - mail_threads.last_activity < $4
                           THEN mail_threads.root_message_id
                           ELSE EXCLUDED.root_message_id END,
    last_activity = GREATEST(mail_threads.last_activity, EXCLUDED.last_activity)
RETURNING root_message_id
