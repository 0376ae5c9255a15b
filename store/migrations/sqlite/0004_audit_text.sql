-- Schema 4: free-text audit search through an index of the records' words instead of a scan
-- of every record (see store/src/audit.rs, "Search"). Words are what SQLite's unicode61
-- tokenizer makes of the document: runs of letters and digits, case folded. Contentless
-- (only the index is kept, keyed by `seq`, not a second copy of the documents) and without
-- positions (`detail = none`: the index says which records hold every word of the text; the
-- search then checks the text itself). Retention removes entries with FTS5's 'delete' command,
-- given the document that was indexed.
CREATE VIRTUAL TABLE audit_words USING fts5(doc, content = '', detail = none);
INSERT INTO audit_words (rowid, doc) SELECT seq, doc FROM audit;
