-- Schema 4: free-text audit search through an index instead of a scan of every record.
-- A trigram index matches any substring of 3 characters or more, case-insensitively (what
-- `LIKE '%text%'` over `doc` matched). Contentless: it keeps only the index, keyed by `seq`,
-- not a second copy of the documents; `contentless_delete` lets retention remove entries.
CREATE VIRTUAL TABLE audit_text USING fts5(doc, content = '', contentless_delete = 1, tokenize = 'trigram');
INSERT INTO audit_text (rowid, doc) SELECT seq, doc FROM audit;
