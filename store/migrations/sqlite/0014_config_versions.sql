-- Schema 14: applied configuration versions (DESIGN §7, issue 10).
-- One row each time `npanel serve` starts or reloads with a configuration that differs from
-- the newest row: the config file's text and the effective merged configuration, both with
-- secrets redacted (a secret is never stored in clear), the built-in defaults of the binary that
-- applied it (so a later binary can say which defaults changed since), who, when and why.
-- `digest` is the SHA-256 of the redacted file text and effective configuration: equal digests
-- mean nothing to record.
CREATE TABLE config_versions (
    version        BIGINT PRIMARY KEY,
    created_at     BIGINT NOT NULL,
    binary_version TEXT NOT NULL,
    actor          TEXT NOT NULL,
    reason         TEXT NOT NULL,
    file_path      TEXT,
    file_text      TEXT,
    effective      TEXT NOT NULL,
    defaults       TEXT NOT NULL,
    digest         TEXT NOT NULL
);
