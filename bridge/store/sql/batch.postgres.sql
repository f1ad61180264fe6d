-- PostgreSQL's combined statements (bridge/store/postgres_batch.py): the hot writes of
-- many callers in one statement per kind, one round trip for all.

-- name: enqueue_mails
-- Many mails in one statement. Each mail takes its deduplication keys unless one was seen
-- within the window (a concurrent transaction inserting the same key makes this wait for its
-- outcome); a batch goes in when it has no key or took its key, a mail when any batch did.
-- Mail and message ids are drawn first, so each message is returned with its place.
WITH mu AS (SELECT u.*, nextval(pg_get_serial_sequence('mails', 'id')) AS id
FROM unnest($1::int[], $2::float8[], $3::text[], $4::text[], $5::text[], $6::text[],
$7::bool[], $22::bytea[], $23::bytea[], $24::int[], $25::text[])
AS u(n, received_at, mail_from, message_id, peer, format, keyless, headers, raw,
raw_size, rcpt_to)),
ku AS (SELECT * FROM unnest($8::bytea[], $9::int[]) AS k(key, n)),
d AS (INSERT INTO mail_dedup (key, mail_id, seen_at)
SELECT ku.key, mu.id, mu.received_at FROM ku JOIN mu ON mu.n = ku.n ORDER BY ku.key
ON CONFLICT (key) DO UPDATE SET mail_id = EXCLUDED.mail_id, seen_at = EXCLUDED.seen_at
WHERE mail_dedup.seen_at < EXCLUDED.seen_at - $10 RETURNING key),
taken AS (SELECT ku.n FROM ku JOIN d ON d.key = ku.key),
su AS (SELECT o.*, nextval(pg_get_serial_sequence('messages', 'id')) AS id
FROM (SELECT s.*, mu.id AS mail_id
FROM unnest($11::int[], $12::int[], $13::bytea[], $14::text[], $15::text[],
$16::text[], $17::text[], $18::int[], $19::text[], $20::text[], $21::float8[])
AS s(n, p, key, account, upstream, phone, text, parts, encoding, options, due)
JOIN mu ON mu.n = s.n WHERE s.key IS NULL OR s.key IN (SELECT key FROM d)
ORDER BY s.n, s.p) o),
mi AS (INSERT INTO mails (id, received_at, mail_from, message_id, peer, format,
headers, raw, raw_size, rcpt_to) SELECT id, received_at, mail_from, message_id, peer,
format, headers, raw, raw_size, rcpt_to FROM mu
WHERE mu.keyless OR mu.n IN (SELECT n FROM taken)),
m AS (INSERT INTO messages (id, mail_id, account, upstream, phone, text, parts,
encoding, options, status, next_attempt_at, created_at, updated_at)
SELECT su.id, su.mail_id, su.account, su.upstream, su.phone, su.text, su.parts,
su.encoding, su.options, 'queued', su.due, mu.received_at, mu.received_at
FROM su JOIN mu ON mu.n = su.n ORDER BY su.id),
e AS (INSERT INTO message_events (message_id, at, status)
SELECT su.id, mu.received_at, 'queued' FROM su JOIN mu ON mu.n = su.n ORDER BY su.id)
SELECT n, p, id FROM su UNION ALL SELECT n, -1, NULL FROM taken

-- name: insert_inbound
-- Many messages and their forwarding jobs in one statement: the jobs of the rows that were
-- inserted go in with them; a row whose (source, dedup_key) exists is skipped, and a
-- concurrent transaction inserting the same key makes this wait for its outcome.
WITH u AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[],
$5::text[], $6::text[], $7::text[], $8::text[], $9::bytea[], $10::text[], $11::int[],
$12::text[], $13::int[], $14::bytea[], $15::text[], $16::float8[], $17::float8[])
WITH ORDINALITY AS u(source, kind, dedup_key, sms_id, content_hash, phone, recipient,
text, raw, charset, charset_error, state, response_status, response_body,
response_type, received_at, deadline, n)),
i AS (INSERT INTO inbound (source, kind, dedup_key, sms_id, content_hash, phone,
recipient, text, raw, charset, charset_error, state, response_status, response_body,
response_type, received_at)
SELECT source, kind, dedup_key, sms_id, content_hash, phone, recipient, text, raw,
charset, charset_error, state, response_status, response_body, response_type,
received_at FROM u ORDER BY n
ON CONFLICT (source, dedup_key) DO NOTHING RETURNING id, source, dedup_key),
j AS (INSERT INTO forward_jobs (inbound_id, kind, target, payload, status,
next_attempt_at, created_at, deadline)
SELECT i.id, f.kind, f.target, f.payload, 'queued', u.received_at, u.received_at,
u.deadline FROM i JOIN u ON u.source = i.source AND u.dedup_key = i.dedup_key
JOIN unnest($18::bigint[], $19::text[], $20::text[], $21::bytea[]) WITH ORDINALITY
AS f(row_n, kind, target, payload, n) ON f.row_n = u.n ORDER BY f.n)
SELECT id, source, dedup_key FROM i

-- name: mark_sent
-- Many sends recorded in one statement, each only while its claim holds (owner and epoch):
-- status, counters, history, the provider-id index, and the delivery reports that came
-- before the send was recorded.
WITH u AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
$5::float8[], $6::float8[], $7::text[], $10::bigint[], $11::int[], $12::int[])
AS u(id, owner, upstream, ids_json, at, poll_at, detail, epoch, answered, settle)),
upd AS (UPDATE messages m SET status = 'sent', upstream_used = u.upstream,
upstream_ids = u.ids_json, last_error = NULL, next_poll_at = u.poll_at,
lease_owner = NULL, lease_until = NULL, updated_at = u.at,
attempts = m.attempts + u.answered, maybe_sent = GREATEST(0, m.maybe_sent - u.settle)
FROM u WHERE m.id = u.id AND m.status = 'sending' AND m.lease_owner = u.owner
AND m.lease_epoch = u.epoch RETURNING m.id),
ev AS (INSERT INTO message_events (message_id, at, status, detail)
SELECT u.id, u.at, 'sent', u.detail FROM u JOIN upd ON upd.id = u.id ORDER BY u.id),
pi AS (INSERT INTO provider_ids (provider_id, message_id)
SELECT p.provider_id, p.message_id FROM unnest($8::text[], $9::bigint[])
AS p(provider_id, message_id) JOIN upd ON upd.id = p.message_id
ON CONFLICT (provider_id) DO UPDATE SET message_id = EXCLUDED.message_id)
SELECT 0 AS report_id, id, NULL::text, NULL::text, NULL::text, NULL::int,
NULL::float8 FROM upd
UNION ALL SELECT r.id, NULL, r.provider_id, r.status, r.raw_status, r.error_code,
r.received_at FROM delivery_reports r
WHERE r.message_id IS NULL AND r.provider_id = ANY($8::text[])
ORDER BY 1

-- name: hold_for_intent
-- The claims that still hold (owner and epoch) count the request in maybe_sent.
WITH u AS (SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::text[],
$5::float8[]) AS u(n, id, epoch, owner, at))
UPDATE messages m SET maybe_sent = m.maybe_sent + 1, updated_at = u.at FROM u
WHERE m.id = u.id AND m.status = 'sending' AND m.lease_owner = u.owner
AND m.lease_epoch = u.epoch RETURNING u.n, m.id

-- name: insert_intents
-- The intents, their ids drawn first so that each row gets its own back.
WITH r AS (SELECT nextval(pg_get_serial_sequence('send_intents', 'id')) AS id, x.*
FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[])
AS x(n, upstream, owner, fingerprint, messages, at)),
i AS (INSERT INTO send_intents (id, upstream, owner, fingerprint, messages, created_at)
SELECT id, upstream, owner, fingerprint, messages, at FROM r)
SELECT n, id FROM r

-- name: record_outcomes
-- Outcomes other than ``sent`` in one statement, each only while its claim holds: status,
-- counters, the lease (kept when the claim goes on with the next upstream), history.
WITH u AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[],
$5::float8[], $6::text[], $7::int[], $8::int[], $9::float8[], $10::text[], $11::text[])
AS u(id, owner, epoch, status, next_at, error, answered, settle, at, event, detail)),
upd AS (UPDATE messages m SET status = u.status,
next_attempt_at = COALESCE(u.next_at, m.next_attempt_at), last_error = u.error,
lease_owner = CASE WHEN u.status = 'sending' THEN m.lease_owner END,
lease_until = CASE WHEN u.status = 'sending' THEN m.lease_until END,
attempts = m.attempts + u.answered, maybe_sent = GREATEST(0, m.maybe_sent - u.settle),
updated_at = u.at
FROM u WHERE m.id = u.id AND m.status = 'sending' AND m.lease_owner = u.owner
AND m.lease_epoch = u.epoch RETURNING m.id),
ev AS (INSERT INTO message_events (message_id, at, status, detail)
SELECT u.id, u.at, u.event, u.detail FROM u JOIN upd ON upd.id = u.id ORDER BY u.id)
SELECT id FROM upd
