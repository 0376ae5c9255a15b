-- Schema 4: free-text audit search through an index of the records' words instead of a scan
-- of every record (see store/src/audit.rs, "Search"). Contentless: only the index is kept,
-- keyed by `seq`, not a second copy of the documents; `contentless_delete` lets retention
-- remove entries. Words are what SQLite's unicode61 tokenizer makes of the document: runs of
-- letters and digits, case folded.
CREATE VIRTUAL TABLE audit_words USING fts5(doc, content = '', contentless_delete = 1, tokenize = 'unicode61');
INSERT INTO audit_words (rowid, doc) SELECT seq, doc FROM audit;
