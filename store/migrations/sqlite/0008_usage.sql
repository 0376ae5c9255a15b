-- Schema 8: the usage time series of the quota sweep (DESIGN §13). One row per account and
-- period: hourly rows (step 3600000 ms) for 30 days, then one row per day (step 86400000);
-- nothing older than two years. `at` is the period's start, Unix ms. Bandwidth and mail are
-- what the period added; disk, files and databases what was there when it was measured.
CREATE TABLE usage_samples (
    account         TEXT NOT NULL,
    step            BIGINT NOT NULL,
    at              BIGINT NOT NULL,
    disk_bytes      BIGINT NOT NULL,
    disk_files      BIGINT NOT NULL,
    bandwidth_bytes BIGINT NOT NULL,
    mail_sent       BIGINT NOT NULL,
    db_bytes        BIGINT,
    addon_domains   BIGINT NOT NULL,
    measured_at     BIGINT NOT NULL,
    PRIMARY KEY (account, step, at)
);
CREATE INDEX usage_samples_at ON usage_samples (step, at);

-- How far the sweep has read each log it counts (an access log, Exim's main log): the file's
-- inode and the byte offset; a file with another inode or shorter than the offset was rotated.
CREATE TABLE usage_cursors (
    source     TEXT PRIMARY KEY,
    inode      BIGINT NOT NULL,
    pos        BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
