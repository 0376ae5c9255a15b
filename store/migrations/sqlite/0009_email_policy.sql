-- Schema 9: per-account overrides of the outbound mail limits (DESIGN §13, issue 9). `doc` is
-- the override as JSON, only the fields the account overrides ({"per_hour": 200}); the
-- effective policy is the defaults, then the package's `email_*` limits, then this. An
-- account without an override has no row. `updated_at` is Unix ms.
CREATE TABLE email_policies (
    account    TEXT PRIMARY KEY,
    doc        TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Exim deferred an account's mail for going over one of its limits (`kind`: per_hour,
-- burst_per_15min, mb_per_hour) in the window starting at `window_start` (Unix ms, the limit's
-- period: an hour, or 15 minutes). One row per window, however many messages were deferred in
-- it, so the incident is audited once per window (DESIGN §13).
CREATE TABLE email_incidents (
    account      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    first_at     BIGINT NOT NULL,
    last_at      BIGINT NOT NULL,
    deferrals    BIGINT NOT NULL,
    PRIMARY KEY (account, kind, window_start)
);
