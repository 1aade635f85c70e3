-- Schema version 3 as wholeimage's PostgreSQL store created it before its DDL was generated from
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
        process_percent     DOUBLE PRECISION,
        error_code          TEXT,
        fail_reason         TEXT,
        created_at          DOUBLE PRECISION NOT NULL,
        updated_at          DOUBLE PRECISION NOT NULL,
        submitted_at        DOUBLE PRECISION,
        ended_at            DOUBLE PRECISION,
        poll_attempts       INTEGER NOT NULL DEFAULT 0,
        next_poll_at        DOUBLE PRECISION,
        deadline_at         DOUBLE PRECISION,
        lease_owner         TEXT,
        lease_expires_at    DOUBLE PRECISION,
        trace               TEXT
    );
    CREATE UNIQUE INDEX IF NOT EXISTS jobs_backup_once ON jobs (source_id)
        WHERE source_kind IN ('csbs', 'cbr') AND status IN ('SUBMITTING', 'SUBMIT_UNCERTAIN', 'SUBMITTED', 'INIT', 'RUNNING', 'SUCCESS');
    CREATE INDEX IF NOT EXISTS jobs_due ON jobs (next_poll_at) WHERE status IN ('SUBMITTED', 'INIT', 'RUNNING');
-- migration 2
CREATE TABLE IF NOT EXISTS notifications (
        notification_id  TEXT PRIMARY KEY,
        result_key       TEXT NOT NULL,
        channel          TEXT NOT NULL,
        result_json      TEXT NOT NULL,
        state            TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        created_at       DOUBLE PRECISION NOT NULL,
        next_attempt_at  DOUBLE PRECISION NOT NULL,
        lease_owner      TEXT,
        lease_expires_at DOUBLE PRECISION,
        delivered_at     DOUBLE PRECISION,
        message_id       TEXT,
        last_error       TEXT,
        dead_at          DOUBLE PRECISION,
        UNIQUE (result_key, channel)
    );
    CREATE INDEX IF NOT EXISTS notifications_due ON notifications (next_attempt_at) WHERE state = 'PENDING';
    CREATE INDEX IF NOT EXISTS notifications_dead ON notifications (dead_at) WHERE state = 'DEAD';
-- migration 3
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at)
