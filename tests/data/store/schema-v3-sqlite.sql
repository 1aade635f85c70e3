-- Schema version 3 as wholeimage's SQLite store created it before its DDL was generated from
-- store/schema.py: frozen, so that tests can compare the generated DDL with existing databases.
-- Each '-- migration N' line starts what migration N ran, verbatim.
-- migration 1
CREATE TABLE IF NOT EXISTS jobs (
    request_id          TEXT PRIMARY KEY,
    idempotency_key     TEXT UNIQUE,
    request_fingerprint TEXT NOT NULL,
    request_json        TEXT NOT NULL,
    requested_by        TEXT,
    source_kind         TEXT NOT NULL,
    source_id           TEXT NOT NULL,
    status              TEXT NOT NULL,
    ims_job_id          TEXT UNIQUE,
    image_id            TEXT,
    process_percent     REAL,
    error_code          TEXT,
    fail_reason         TEXT,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    submitted_at        REAL,
    ended_at            REAL,
    poll_attempts       INTEGER NOT NULL DEFAULT 0,
    next_poll_at        REAL,
    deadline_at         REAL,
    lease_owner         TEXT,
    lease_expires_at    REAL,
    trace               TEXT
);
-- One backup, one image: at most one job per backup in a blocking state, even under a race.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_backup_once ON jobs (source_id)
    WHERE source_kind IN ('csbs', 'cbr') AND status IN ('SUBMITTING', 'SUBMIT_UNCERTAIN', 'SUBMITTED', 'INIT', 'RUNNING', 'SUCCESS');
-- Due jobs only: a partial index over outstanding rows, ordered by next poll time.
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (next_poll_at) WHERE status IN ('SUBMITTED', 'INIT', 'RUNNING');
-- migration 2
CREATE TABLE IF NOT EXISTS notifications (
    notification_id  TEXT PRIMARY KEY,
    result_key       TEXT NOT NULL,
    channel          TEXT NOT NULL,
    result_json      TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    next_attempt_at  REAL NOT NULL,
    lease_owner      TEXT,
    lease_expires_at REAL,
    delivered_at     REAL,
    message_id       TEXT,
    last_error       TEXT,
    dead_at          REAL,
    UNIQUE (result_key, channel)
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (next_attempt_at) WHERE state = 'PENDING';
CREATE INDEX IF NOT EXISTS notifications_dead ON notifications (dead_at) WHERE state = 'DEAD';
-- migration 3
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at)
