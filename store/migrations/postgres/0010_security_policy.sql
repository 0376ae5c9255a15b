-- Schema 10: per-account security policy (DESIGN §13, issue 9). An account without a row follows
-- the host's template (`host.security_profile`) with no overrides. `policy` is the chosen
-- template (strict, moderate, legacy; NULL = the host default); `settings` the pinned settings
-- as a JSON object of validated values (`{}` = none). The row goes with its account.
CREATE TABLE account_security (
    account    TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    policy     TEXT,
    settings   TEXT NOT NULL DEFAULT '{}',
    updated_at BIGINT NOT NULL
);
