-- Named leases (one process of a cluster does a job: polls an upstream's inbound SMS,
-- receives its reports) and the processes alive (their count divides rate limits), each in
-- a table of its own instead of "lease:NAME" = "OWNER|UNTIL" and "alive:OWNER" = "TIME"
-- rows in meta. The rows found in meta move here.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE processes (
    owner TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
);
CREATE INDEX processes_seen ON processes(seen_at);
-- The owner is everything before the last "|": rtrim drops the time (digits, '.', 'e',
-- '+', '-', "inf") and stops at that "|".
INSERT INTO leases (name, owner, expires_at)
    SELECT substr(key, 7),
           substr(head, 1, length(head) - 1),
           CAST(substr(value, length(head) + 1) AS REAL)
    FROM (SELECT key, value, rtrim(value, '0123456789.eE+-inf') AS head
          FROM meta WHERE key LIKE 'lease:%')
    WHERE head LIKE '%|';
INSERT INTO processes (owner, seen_at)
    SELECT substr(key, 7), CAST(value AS REAL) FROM meta WHERE key LIKE 'alive:%';
DELETE FROM meta WHERE key LIKE 'lease:%' OR key LIKE 'alive:%';
