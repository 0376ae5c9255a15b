-- Schema 11: what the quota sweep concluded from the usage series (DESIGN §13).
-- The level each account is at for each limited resource (0, 80, 95 or 100 % of its limit) and
-- whether the host enforces it; per-account overrides of the limits and a grace period; and the
-- notifications the panel and the dashboard show.
CREATE TABLE usage_levels (
    account  TEXT NOT NULL,
    resource TEXT NOT NULL,
    level    BIGINT NOT NULL,
    percent  BIGINT NOT NULL,
    since    BIGINT NOT NULL,
    enforced BIGINT NOT NULL,
    PRIMARY KEY (account, resource)
);

CREATE TABLE usage_overrides (
    account     TEXT PRIMARY KEY,
    disk_mb     BIGINT,
    bandwidth_mb BIGINT,
    grace_until BIGINT,
    reason      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE notifications (
    id       TEXT PRIMARY KEY,
    account  TEXT NOT NULL,
    ts       BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    resource TEXT,
    level    BIGINT,
    message  TEXT NOT NULL
);
CREATE INDEX notifications_account ON notifications (account, ts);
CREATE INDEX notifications_ts ON notifications (ts);

-- Traffic counted from the logs but not yet in a sample: the sweep moves log counts here in the
-- same transaction as it moves the logs' cursors, and each sample takes its account's share in
-- the transaction that writes it. A sweep that fails between the two loses nothing and counts
-- nothing twice.
CREATE TABLE usage_pending (
    account         TEXT PRIMARY KEY,
    bandwidth_bytes BIGINT NOT NULL,
    mail_sent       BIGINT NOT NULL
);
