-- Schema 4: free-text audit search through an index of the records' words instead of a scan
-- of every record (see store/src/audit.rs, "Search"). The words are runs of letters and
-- digits, lower-cased, as on SQLite: punctuation becomes spaces before the 'simple' parser
-- (no stemming, no stop words) sees the document. The search repeats this expression exactly.
CREATE INDEX audit_words ON audit
    USING gin (to_tsvector('simple'::regconfig, regexp_replace(doc, '[^[:alnum:]]+', ' ', 'g')));
