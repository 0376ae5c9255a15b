-- Schema 9: per-account overrides of the outbound mail limits (DESIGN §13, issue 9). `doc` is
-- the override as JSON, only the fields the account overrides ({"per_hour": 200}); the
-- effective policy is the defaults, then the package's `email_*` limits, then this. An
-- account without an override has no row. `updated_at` is Unix ms.
CREATE TABLE email_policies (
    account    TEXT PRIMARY KEY,
    doc        TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
