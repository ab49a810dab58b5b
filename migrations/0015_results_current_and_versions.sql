-- results holds the current version of each result only; the versions a correction replaced move
-- to result_versions.
--
-- Why: every index of results and every trigger on it is paid once per row of a bulk load
-- (about 1 s per million rows each, measured on the load statement of a million-row import).
-- Until now results carried three indexes (the surrogate key, the unique (key, version) and the
-- partial unique current key) and two statement triggers (references, independence). With the
-- superseded versions elsewhere, one unique index on (sample_code, item_code, lab_code) says
-- both "one current version per key" and the part of the independence rules that compares
-- results with each other, and one trigger per event checks the references and the one rule an
-- index cannot express, in a single read of the statement's rows.

-- 1. The finiteness checks of results' numbers as plain comparisons: two comparisons where
-- labeval_is_finite made four (measured on the load of a million rows, triggers off, four
-- alternating pairs: 0.07 s of server CPU less by the median, a small gain). Same rows refused: a CHECK refuses a row only
-- when its expression is false, and in PostgreSQL NaN is greater than every other float8 (and
-- equal to itself), so for x not null "x > -Infinity AND x < Infinity" is false exactly for NaN
-- and for ±Infinity, as labeval_is_finite(x) is; for null both pass. Likewise "x >= 0 AND
-- x < Infinity" (and "> 0") is false exactly where "labeval_is_finite(x) AND x >= 0" is.
ALTER TABLE results
    DROP CONSTRAINT results_value_check,
    ADD CONSTRAINT results_value_check CHECK (value > '-Infinity' AND value < 'Infinity'),
    DROP CONSTRAINT results_censor_limit_check,
    ADD CONSTRAINT results_censor_limit_check CHECK (censor_limit >= 0 AND censor_limit < 'Infinity'),
    DROP CONSTRAINT results_expanded_uncertainty_check,
    ADD CONSTRAINT results_expanded_uncertainty_check
        CHECK (expanded_uncertainty >= 0 AND expanded_uncertainty < 'Infinity'),
    DROP CONSTRAINT results_coverage_k_check,
    ADD CONSTRAINT results_coverage_k_check CHECK (coverage_k > 0 AND coverage_k < 'Infinity');

-- 2. The versions a correction replaced: the rows as they were, result_id kept (a grading run's
-- pair id is the retest's result_id), and when they were replaced. Columns, collations and CHECK
-- constraints as in results, so that a version reads exactly as it did while it was current.
CREATE TABLE result_versions (LIKE results INCLUDING CONSTRAINTS);
ALTER TABLE result_versions
    ALTER COLUMN superseded_at SET NOT NULL,
    ADD PRIMARY KEY (result_id),
    ADD UNIQUE (sample_code, item_code, role, lab_code, version),
    -- Corrections are a few rows per import, so ordinary foreign keys cost nothing that matters
    -- here; they keep a parent from going while only an old version still names it.
    ADD FOREIGN KEY (sample_code) REFERENCES samples (sample_code),
    ADD FOREIGN KEY (item_code) REFERENCES test_items (item_code),
    ADD FOREIGN KEY (lab_code) REFERENCES labs (lab_code);

INSERT INTO result_versions
    (result_id, sample_code, item_code, lab_code, role, value, censored, censor_limit, raw_value, unit,
     expanded_uncertainty, coverage_k, replicates, verdict, decision_rule, reported_on, version,
     superseded_at, import_id, created_at)
SELECT result_id, sample_code, item_code, lab_code, role, value, censored, censor_limit, raw_value, unit,
       expanded_uncertainty, coverage_k, replicates, verdict, decision_rule, reported_on, version,
       superseded_at, import_id, created_at
FROM results WHERE superseded_at IS NOT NULL;
DELETE FROM results WHERE superseded_at IS NOT NULL;

-- 3. results: current rows only. superseded_at goes: it would be null in every row, and a column
-- that must be null would need a CHECK of its own, paid on every row loaded.
DROP INDEX results_current_key;
ALTER TABLE results
    DROP CONSTRAINT results_sample_code_item_code_role_lab_code_version_key,
    DROP COLUMN superseded_at;
-- A lab holds at most one role on a sample item among current results. Two rows of one key are
-- two rows of this key too (one current version per key), and a lab in two roles on one sample
-- item is the independence rule of 0001/0011 between results (a retest or arbitration by the
-- original's lab, an original by a retest or arbitration lab, an arbitration by the retest lab).
-- Named for what it refuses: the error of a violation names it. A database holding current rows
-- stored before 0011 that break the rule fails here, on this name, and is not migrated.
CREATE UNIQUE INDEX results_one_role_per_lab ON results (sample_code, item_code, lab_code);

-- 4. One trigger per event, one read of the statement's rows: the reference checks of 0014 (same
-- locks, same errors, same order of the parents) and the rule no index of results can hold, a
-- retest or arbitration by the lab the samples register names as the sample's original lab.
-- As before, a later change of samples.original_lab_code does not re-check stored results.
DROP TRIGGER results_independent_lab_insert ON results;
DROP TRIGGER results_independent_lab_update ON results;
DROP FUNCTION results_check_independent_lab();
DROP TRIGGER results_references_insert ON results;
DROP TRIGGER results_references_update ON results;
DROP FUNCTION results_check_references();

CREATE FUNCTION results_check_writes() RETURNS trigger
    LANGUAGE plpgsql
    -- Room for the hashes of a large statement's distinct codes.
    SET work_mem = '64MB'
    AS $$
DECLARE
    sample_codes text[];
    item_codes text[];
    lab_codes text[];
    by_original_lab boolean;
    codes text[];
    ref record;
    locked bigint;
    missing text;
    bad record;
BEGIN
    -- The statement's rows meet the register as they are grouped: a sample's group says whether
    -- any of its retests or arbitrations is by the sample's original lab. (Measured on a million
    -- rows: 0.2 s of server CPU less than grouping the (sample, lab) pairs of retests and
    -- arbitrations as a fourth set and joining those with the register afterwards.)
    -- GROUPING() tells the sets apart: a bit is 1 for an argument the set does not group by.
    SELECT coalesce(array_agg(d.sample_code) FILTER (WHERE d.g = 3), '{}'),
           coalesce(array_agg(d.item_code) FILTER (WHERE d.g = 5), '{}'),
           coalesce(array_agg(d.lab_code) FILTER (WHERE d.g = 6), '{}'),
           coalesce(bool_or(d.by_original_lab) FILTER (WHERE d.g = 3), false)
    INTO sample_codes, item_codes, lab_codes, by_original_lab
    FROM (SELECT n.sample_code, n.item_code, n.lab_code,
                 bool_or(n.role <> 'original' AND n.lab_code = s.original_lab_code) AS by_original_lab,
                 GROUPING(n.sample_code, n.item_code, n.lab_code) AS g
          FROM new_rows n LEFT JOIN samples s ON s.sample_code = n.sample_code
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
    IF by_original_lab THEN
        -- The offending row itself, for the message (a second read, only on the way to an error).
        SELECT n.role, n.sample_code, n.item_code, n.lab_code INTO bad
        FROM new_rows n JOIN samples s ON s.sample_code = n.sample_code AND s.original_lab_code = n.lab_code
        WHERE n.role <> 'original'
        LIMIT 1;
        RAISE EXCEPTION 'a % result of sample % item % by lab %, which also tested it in another role',
            bad.role, bad.sample_code, bad.item_code, bad.lab_code
            USING ERRCODE = 'check_violation', CONSTRAINT = 'results_retest_by_other_lab';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER results_check_insert
    AFTER INSERT ON results REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION results_check_writes();
CREATE TRIGGER results_check_update
    AFTER UPDATE ON results REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION results_check_writes();
