-- Schema 2: what provisioning records about the host, and WHMCS API keys.
ALTER TABLE accounts ADD COLUMN uid BIGINT;
ALTER TABLE accounts ADD COLUMN gid BIGINT;
CREATE INDEX accounts_whmcs ON accounts (whmcs_service_id);

-- A key: its id is public (Bearer), its secrets sign requests (HMAC-SHA256). Several secrets
-- may be active at once while WHMCS switches to a rotated one.
CREATE TABLE whmcs_keys (
    id         TEXT PRIMARY KEY,
    reseller   TEXT,
    secrets    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    note       TEXT
);
