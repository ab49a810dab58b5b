-- Codes compare as bytes, and results' references are gathered in one pass.
--
-- 1. Codes are identifiers, not prose. Under the database's default collation every B-tree
-- comparison of a code (the unique keys of results, every join on a code, the reference and
-- independence checks) went through the C library's locale-aware comparison: on a server made
-- with en_US.UTF-8 that is a multi-pass comparison per pair of strings, and even under C.UTF-8 it
-- is a call and a copy where a memcmp would do. COLLATE "C" makes them byte comparisons. Every
-- code column of every table changes in this one migration, so that a join between two tables
-- never compares codes under two collations; codes now sort by their bytes (for ASCII codes,
-- as they did under C.UTF-8; digits before upper case before lower case). Equality is the same
-- under both (both collations are deterministic): no key that was unique stops being so.
ALTER TABLE product_categories ALTER COLUMN category_code TYPE text COLLATE "C";
ALTER TABLE labs ALTER COLUMN lab_code TYPE text COLLATE "C";
ALTER TABLE lab_scopes
    ALTER COLUMN lab_code TYPE text COLLATE "C",
    ALTER COLUMN category_code TYPE text COLLATE "C";
ALTER TABLE test_items
    ALTER COLUMN item_code TYPE text COLLATE "C",
    ALTER COLUMN category_code TYPE text COLLATE "C";
ALTER TABLE samples
    ALTER COLUMN sample_code TYPE text COLLATE "C",
    ALTER COLUMN category_code TYPE text COLLATE "C",
    ALTER COLUMN original_lab_code TYPE text COLLATE "C";
ALTER TABLE results
    ALTER COLUMN sample_code TYPE text COLLATE "C",
    ALTER COLUMN item_code TYPE text COLLATE "C",
    ALTER COLUMN lab_code TYPE text COLLATE "C",
    -- Part of both unique keys of results.
    ALTER COLUMN role TYPE text COLLATE "C";
ALTER TABLE pt_results
    ALTER COLUMN lab_code TYPE text COLLATE "C",
    ALTER COLUMN scheme_code TYPE text COLLATE "C",
    ALTER COLUMN round_code TYPE text COLLATE "C",
    ALTER COLUMN item_code TYPE text COLLATE "C";
ALTER TABLE lab_reports ALTER COLUMN lab_code TYPE text COLLATE "C";
ALTER TABLE lab_complaints ALTER COLUMN lab_code TYPE text COLLATE "C";
ALTER TABLE lab_audit_findings ALTER COLUMN lab_code TYPE text COLLATE "C";
ALTER TABLE lab_report_findings ALTER COLUMN lab_code TYPE text COLLATE "C";
ALTER TABLE lab_grades ALTER COLUMN lab_code TYPE text COLLATE "C";
ALTER TABLE grade_overrides ALTER COLUMN lab_code TYPE text COLLATE "C";
ALTER TABLE grade_events ALTER COLUMN lab_code TYPE text COLLATE "C";
ALTER TABLE retest_plan_samples
    ALTER COLUMN sample_code TYPE text COLLATE "C",
    ALTER COLUMN original_lab_code TYPE text COLLATE "C",
    ALTER COLUMN category_code TYPE text COLLATE "C";

-- 2. The reference check of results (0009) read the statement's new rows three times (once per
-- parent: 0.2 s each for a million rows) and locked the parents through one index probe per
-- distinct code (the planner expects 200 distinct codes of a set it has no statistics for: 0.35 s
-- for 170 000 samples). Now one pass gathers the distinct codes of all three parents (grouping
-- sets, one hash table each), and each parent's rows are locked by a join with its codes as an
-- array, whose length the planner knows: a hash join for a large statement, index probes for a
-- small one. Same locks (FOR KEY SHARE, once per distinct code), same error, same order of the
-- parents checked.
CREATE OR REPLACE FUNCTION results_check_references() RETURNS trigger
    LANGUAGE plpgsql
    -- Room for the hashes of a large statement's distinct codes.
    SET work_mem = '64MB'
    AS $$
DECLARE
    sample_codes text[];
    item_codes text[];
    lab_codes text[];
    codes text[];
    ref record;
    locked bigint;
    missing text;
BEGIN
    SELECT coalesce(array_agg(d.sample_code) FILTER (WHERE d.sample_code IS NOT NULL), '{}'),
           coalesce(array_agg(d.item_code) FILTER (WHERE d.item_code IS NOT NULL), '{}'),
           coalesce(array_agg(d.lab_code) FILTER (WHERE d.lab_code IS NOT NULL), '{}')
    INTO sample_codes, item_codes, lab_codes
    FROM (SELECT n.sample_code, n.item_code, n.lab_code FROM new_rows n
          GROUP BY GROUPING SETS ((n.sample_code), (n.item_code), (n.lab_code))) d;
    FOR ref IN SELECT * FROM (VALUES (1, 'samples', 'sample_code'), (2, 'test_items', 'item_code'),
                                     (3, 'labs', 'lab_code')) AS v (i, parent, code) LOOP
        codes := CASE ref.i WHEN 1 THEN sample_codes WHEN 2 THEN item_codes ELSE lab_codes END;
        EXECUTE format(
            'SELECT count(*) FROM (SELECT 1 FROM %1$I p JOIN unnest($1::text[]) AS d (code) ON d.code = p.%2$I
                                   FOR KEY SHARE OF p) l',
            ref.parent, ref.code) INTO locked USING codes;
        IF locked < cardinality(codes) THEN
            EXECUTE format(
                'SELECT n.%2$I FROM new_rows n WHERE NOT EXISTS (SELECT 1 FROM %1$I p WHERE p.%2$I = n.%2$I) LIMIT 1',
                ref.parent, ref.code) INTO missing;
            RAISE EXCEPTION 'a result with % % which is not in %', ref.code, missing, ref.parent
                USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'results_' || ref.code || '_ref';
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
