-- Schema 3: verified points of the audit chain, so a verification walks only what is new.
CREATE TABLE audit_checkpoints (
    seq         BIGINT PRIMARY KEY,
    hash        TEXT NOT NULL,
    verified_at BIGINT NOT NULL
);
