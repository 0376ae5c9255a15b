-- Schema 6: PostgreSQL's free-text index holds each word with the word after it (see
-- store/src/audit.rs, "Search"). An IP's words (`198`, `51`, `3`, `105`) are common numbers
-- found together in much of a year of records, so ANDing them gave a large candidate set
-- (p99 15-53 s at 3.65 M records); as pairs (`198 51`, `51 3`, `3 105`) they are rare
-- lexemes, and one word is found as the prefix of its pairs. The lexemes are kept in a column
-- the store fills when it appends (`terms`, made in Rust: no regexp per insert, and the
-- planner gets statistics for them); this backfills the records already stored the same way:
-- words are runs of ASCII letters and digits of the lower-cased document, a pair is the word,
-- a space and the next word (nothing after the last), cut to the 2047 bytes a lexeme may take
-- (the first word to its first 2046 bytes, then what fits of the second).
-- The index itself is schema 7.
ALTER TABLE audit ADD COLUMN terms tsvector NOT NULL DEFAULT ''::tsvector;

DROP INDEX audit_words;

UPDATE audit SET terms = array_to_tsvector(ARRAY(
    SELECT DISTINCT left(x.a[i], 2046) || ' '
        || left(coalesce(x.a[i + 1], ''), 2046 - least(octet_length(x.a[i]), 2046))
    FROM generate_series(1, cardinality(x.a)) AS i
    WHERE x.a[i] <> ''))
FROM (
    SELECT seq, regexp_split_to_array(btrim(regexp_replace(LOWER(doc), '[^a-z0-9]+', ' ', 'g')), ' ') AS a
    FROM audit
) AS x
WHERE audit.seq = x.seq;
