-- The schema as it stood when migrations were first numbered in files: the steps of the
-- numbering before (counted by PRAGMA user_version), one "-- step: N" each.
-- A new store runs them all; a store made before is brought here by running the steps
-- after the one it recorded (bridge.store.migrations.adopt_legacy), data kept.

-- step: 1
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE mails (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    mail_from TEXT NOT NULL,
    message_id TEXT,
    peer TEXT NOT NULL,
    format TEXT NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    mail_id INTEGER REFERENCES mails(id),
    account TEXT NOT NULL,
    upstream TEXT NOT NULL,
    phone TEXT NOT NULL,
    text TEXT NOT NULL,
    parts INTEGER NOT NULL,
    encoding TEXT NOT NULL,
    options TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    upstream_used TEXT,
    upstream_ids TEXT NOT NULL DEFAULT '[]',
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX messages_queued ON messages(next_attempt_at) WHERE status = 'queued';
CREATE INDEX messages_leased ON messages(lease_until) WHERE status = 'sending';
CREATE TABLE message_events (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    at REAL NOT NULL,
    status TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX message_events_message ON message_events(message_id);
CREATE TABLE mail_dedup (key TEXT PRIMARY KEY, mail_id INTEGER, seen_at REAL NOT NULL);
CREATE INDEX mail_dedup_seen ON mail_dedup(seen_at);
CREATE TABLE outgoing_mail (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    mail_to TEXT NOT NULL,
    content BLOB NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    last_error TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX outgoing_mail_due ON outgoing_mail(next_attempt_at) WHERE status != 'sent';

-- step: 2
ALTER TABLE messages ADD COLUMN delivery_status TEXT;
ALTER TABLE messages ADD COLUMN delivery_detail TEXT;
ALTER TABLE messages ADD COLUMN next_poll_at REAL;
ALTER TABLE messages ADD COLUMN poll_count INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_polls ON messages(upstream_used, next_poll_at)
    WHERE next_poll_at IS NOT NULL;
CREATE TABLE provider_ids (
    provider_id TEXT PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id)
);
CREATE TABLE delivery_reports (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    message_id INTEGER,
    status TEXT NOT NULL,
    raw_status TEXT NOT NULL,
    error_code INTEGER,
    received_at REAL NOT NULL
);
CREATE INDEX delivery_reports_unmatched ON delivery_reports(provider_id)
    WHERE message_id IS NULL;
CREATE TABLE inbound (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    sms_id TEXT,
    content_hash TEXT NOT NULL,
    phone TEXT NOT NULL,
    recipient TEXT,
    text TEXT NOT NULL,
    raw BLOB NOT NULL,
    charset TEXT NOT NULL,
    charset_error INTEGER NOT NULL,
    state TEXT NOT NULL,
    response_status INTEGER,
    response_body BLOB,
    response_type TEXT,
    script_error TEXT,
    received_at REAL NOT NULL,
    UNIQUE (source, dedup_key)
);
CREATE INDEX inbound_hash ON inbound(source, content_hash, received_at);
CREATE TABLE forward_jobs (
    id INTEGER PRIMARY KEY,
    inbound_id INTEGER NOT NULL REFERENCES inbound(id),
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    payload BLOB NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    last_error TEXT,
    created_at REAL NOT NULL,
    deadline REAL NOT NULL
);
CREATE INDEX forward_jobs_due ON forward_jobs(kind, next_attempt_at)
    WHERE status = 'queued';
CREATE INDEX forward_jobs_leased ON forward_jobs(lease_until) WHERE status = 'sending';
CREATE TABLE reply_scripts (
    id INTEGER PRIMARY KEY,
    shortcode TEXT NOT NULL,
    keyword TEXT,
    url TEXT NOT NULL,
    method TEXT NOT NULL,
    timeout REAL NOT NULL,
    secret TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

-- The content index serves only messages without sms_id (the deduplication window):
-- messages with one no longer pay for its entries.
-- step: 3
DROP INDEX inbound_hash;
CREATE INDEX inbound_hash_noid ON inbound(source, content_hash, received_at)
    WHERE sms_id IS NULL;

-- Threads of forwarded SMS mails (per conversation and mailbox: the first mail's
-- Message-ID, the last SMS's time), the thread each e-mail forward joined (decided once,
-- so every retry carries the same headers), and each mail's header block (capped) for
-- the text/rfc822-headers part of its bounce.
-- step: 4
CREATE TABLE mail_threads (
    thread_key TEXT PRIMARY KEY,
    root_message_id TEXT NOT NULL,
    last_activity REAL NOT NULL
);
ALTER TABLE forward_jobs ADD COLUMN thread_root TEXT;
ALTER TABLE mails ADD COLUMN headers BLOB;

-- The provider's time of each delivery report (a late or repeated report never takes
-- a final status back; between finals the later time wins), an index to find a
-- message's reports, and until when the caller of a short-code hit's reply script holds
-- the call (a repeat takes a pending hit over once that hold ran out: its caller died
-- mid-call).
-- step: 5
ALTER TABLE delivery_reports ADD COLUMN reported_at REAL;
CREATE INDEX delivery_reports_message ON delivery_reports(message_id)
    WHERE message_id IS NOT NULL;
ALTER TABLE inbound ADD COLUMN answer_until REAL;

-- The operators' console: each mail as received (redacted, its first 64 KiB, kept for
-- store.trace_retention_days), its full size and envelope recipients, the provider
-- requests and answers of each send (one row per request, linked to every message it
-- carried), each upstream's health, the operators' actions, and indexes for a search by
-- phone and for the sends of the last hour.
-- step: 6
ALTER TABLE mails ADD COLUMN raw BLOB;
ALTER TABLE mails ADD COLUMN rcpt_to TEXT;
ALTER TABLE mails ADD COLUMN raw_size INTEGER;
CREATE INDEX mails_raw_age ON mails(received_at) WHERE raw IS NOT NULL;
CREATE TABLE provider_exchanges (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    upstream TEXT NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    request BLOB,
    status INTEGER,
    response BLOB,
    error TEXT,
    duration REAL
);
CREATE INDEX provider_exchanges_at ON provider_exchanges(at);
CREATE TABLE provider_exchange_messages (
    message_id INTEGER NOT NULL,
    exchange_id INTEGER NOT NULL,
    PRIMARY KEY (message_id, exchange_id)
);
CREATE INDEX provider_exchange_messages_exchange ON provider_exchange_messages(exchange_id);
CREATE TABLE upstream_health (
    upstream TEXT PRIMARY KEY,
    last_success_at REAL,
    last_error_at REAL,
    last_error TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    paused_until REAL
);
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    via TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    remote TEXT NOT NULL
);
CREATE INDEX messages_phone ON messages(phone);
CREATE INDEX message_events_sent ON message_events(at) WHERE status = 'sent';

-- Every SMS sent once: each provider request is recorded as an intent before it is made
-- (the messages and their claims' epochs, the request's fingerprint) and ended by its
-- outcomes; a message counts its requests of unknown fate (maybe_sent) apart from its
-- attempts, and each claim raises its fencing token (lease_epoch).
-- step: 7
ALTER TABLE messages ADD COLUMN maybe_sent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
CREATE TABLE send_intents (
    id INTEGER PRIMARY KEY,
    upstream TEXT NOT NULL,
    owner TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    messages TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT
);
CREATE INDEX send_intents_open ON send_intents(created_at) WHERE finished_at IS NULL;

-- The operators' console: each attempt of a forward with its outcome (delivered, retry,
-- dead) and the target's answer or the error, redacted; the last MAX_ATTEMPTS_KEPT of
-- each job, pruned with the traces after store.trace_retention_days.
-- step: 8
CREATE TABLE forward_attempts (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX forward_attempts_job ON forward_attempts(job_id, id);
CREATE INDEX forward_attempts_at ON forward_attempts(at);
