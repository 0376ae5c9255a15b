-- Schema 4: free-text audit search through an index instead of a scan of every record.
-- A pg_trgm GIN index on LOWER(doc) serves `LOWER(doc) LIKE '%text%'` (3 characters or more).
-- pg_trgm ships with PostgreSQL (contrib) and is a trusted extension since 13, so a database
-- owner may create it; where it cannot be created the index is left out and free text scans,
-- as before (the migration does not fail on it).
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'pg_trgm is not available (%): audit free-text search will scan', SQLERRM;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        CREATE INDEX audit_text ON audit USING gin (LOWER(doc) gin_trgm_ops);
    END IF;
END
$$;
