-- Schema 13: post-migration health (DESIGN §12).
-- A migration is a restore that finished: its account, the archive it came from and the
-- restore's summary (what it restored and what it skipped), so a health check can compare the
-- account with the archive later. Health reports are kept 30 days (the retention job).
CREATE TABLE migrations (
    id          TEXT PRIMARY KEY,
    account     TEXT NOT NULL,
    archive     TEXT NOT NULL,
    restored_at BIGINT NOT NULL,
    summary     TEXT NOT NULL
);
CREATE INDEX migrations_account ON migrations (account, restored_at);

CREATE TABLE health_reports (
    id           TEXT PRIMARY KEY,
    migration_id TEXT NOT NULL,
    account      TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    score        BIGINT NOT NULL,
    report       TEXT NOT NULL
);
CREATE INDEX health_reports_migration ON health_reports (migration_id, created_at);
CREATE INDEX health_reports_created ON health_reports (created_at);
