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

-- name: forward_outcome_recorded
-- The job's outcome and its attempt in the history in one statement, only when the caller
-- holds the lease ($1 job, $2 owner; an outcome ignored leaves no attempt either): $3 at,
-- $4 outcome (delivered, retry: queued again, dead), $5 detail, $7 the next attempt (a
-- retry's; NULL keeps it), $8 the error (NULL for a delivery). The job keeps its last
-- attempts: the DELETE sees the rows as they were before the statement (one snapshot for
-- all its parts), so it keeps the newest $6 of them besides the new one.
WITH held AS (
    UPDATE forward_jobs
    SET status = CASE $4::text WHEN 'delivered' THEN 'delivered'
                               WHEN 'retry' THEN 'queued' ELSE 'dead' END,
        next_attempt_at = COALESCE($7, next_attempt_at), last_error = $8,
        lease_until = NULL
    WHERE id = $1 AND status = 'sending' AND lease_owner = $2 RETURNING id),
added AS (INSERT INTO forward_attempts (job_id, at, outcome, detail)
          SELECT id, $3::double precision, $4::text, $5::text FROM held)
DELETE FROM forward_attempts
WHERE job_id IN (SELECT id FROM held)
  AND id <= (SELECT id FROM forward_attempts WHERE job_id = $1 ORDER BY id DESC LIMIT 1
             OFFSET $6)

-- name: claim_forward_jobs
-- Due jobs of the kinds ($2), none of the "kind target" pairs of $6; rows another
-- instance is claiming are skipped, not waited for.
WITH due AS (
    SELECT id FROM forward_jobs
    WHERE kind = ANY($2::text[])
      AND ((status = 'queued' AND next_attempt_at <= $1)
           OR (status = 'sending' AND lease_until <= $1))
      AND kind || ' ' || target <> ALL($6::text[])
    ORDER BY CASE WHEN status = 'queued' THEN next_attempt_at ELSE lease_until END, id
    LIMIT $3 FOR UPDATE SKIP LOCKED)
UPDATE forward_jobs f SET status = 'sending', lease_owner = $4, lease_until = $5,
                          attempts = f.attempts + 1
FROM due WHERE f.id = due.id
RETURNING f.id, f.inbound_id, f.kind, f.target, f.payload, f.attempts, f.deadline
