-- Schema 4: free-text audit search through an index of the records' words instead of a scan
-- of every record (see store/src/audit.rs, "Search"). Words here are runs of ASCII letters and
-- digits of the lower-cased document, whatever the database's locale (everything else becomes
-- a space before the 'simple' parser, which neither stems nor drops stop words, and ignores a
-- word over 2047 bytes instead of failing the insert). The search repeats this expression
-- exactly.
CREATE INDEX audit_words ON audit
    USING gin (to_tsvector('simple'::regconfig, regexp_replace(LOWER(doc), '[^a-z0-9]+', ' ', 'g')));
