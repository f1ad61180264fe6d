-- Named leases (one process of a cluster does a job: polls an upstream's inbound SMS,
-- receives its reports) and the processes alive (their count divides rate limits), each in
-- a table of its own instead of "lease:NAME" = "OWNER|UNTIL" and "alive:OWNER" = "TIME"
-- rows in meta. The rows found in meta move here.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE processes (
    owner TEXT PRIMARY KEY,
    seen_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX processes_seen ON processes(seen_at);
INSERT INTO leases (name, owner, expires_at)
    SELECT substr(key, 7),
           substring(value from '^(.*)\|[^|]*$'),
           COALESCE(substring(value from '\|([0-9.eE+-]+|-?inf|-?Infinity)$')::float8, 0)
    FROM meta WHERE key LIKE 'lease:%' AND value LIKE '%|%';
INSERT INTO processes (owner, seen_at)
    SELECT substr(key, 7), value::float8 FROM meta WHERE key LIKE 'alive:%';
DELETE FROM meta WHERE key LIKE 'lease:%' OR key LIKE 'alive:%';
