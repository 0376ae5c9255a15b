-- Schema 7: the free-text index over `terms` (schema 6). Its own migration so that a bulk load
-- can drop it and build it again with exactly this statement.
CREATE INDEX audit_terms ON audit USING gin (terms);
