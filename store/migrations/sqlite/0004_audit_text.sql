-- Schema 4: free-text audit search through an index of the records' words instead of a scan
-- of every record (see store/src/audit.rs, "Search"). Words are what SQLite's unicode61
-- tokenizer makes of the document: runs of letters and digits, case folded. Contentless: only
-- the index is kept, keyed by `seq`, not a second copy of the documents. With positions, so a
-- text of several words (an IP address: 198, 51, 3, 105) is looked up as a phrase; without
-- them, every record holding those common numbers anywhere was a candidate. Retention removes
-- entries with FTS5's 'delete' command, given the document that was indexed.
CREATE VIRTUAL TABLE audit_words USING fts5(doc, content = '');
INSERT INTO audit_words (rowid, doc) SELECT seq, doc FROM audit;
