-- Schema 12: an account's domains beyond its primary one (DESIGN §10, §11, §13; issue 9).
-- `domain` is lower case and unique across every account (the primary key); the store also
-- refuses a domain that is any live account's primary domain (`accounts.domain`), which a
-- constraint cannot say. `kind` is `addon` (counted against the package's `addon_domains`),
-- `parked` or `sub`. `created_at` is Unix ms. A terminated account's rows are removed by its
-- terminate job, so its domains can be used again.
CREATE TABLE account_domains (
    domain     TEXT PRIMARY KEY,
    account    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX account_domains_account ON account_domains (account, kind, domain);
