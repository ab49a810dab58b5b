-- Results' references checked once per statement instead of once per row.
--
-- The three foreign keys of results (sample, item, lab) cost three index probes and three row
-- locks for every result row: measured on a 200 000-row import they were 57 % of the load.
-- Intake already rejects unknown codes (with their file, row, column and reason) before loading,
-- so in the database they are only a guard against other writers and concurrent deletes. The
-- guard stays, set-based:
--   * a statement-level trigger on results locks the referenced parent rows (FOR KEY SHARE, as a
--     foreign key does, but once per distinct code, not once per row) and refuses the statement
--     if one is missing;
--   * statement-level triggers on samples, test_items and labs refuse a DELETE, an UPDATE that
--     changes a code, or a TRUNCATE while a result still refers to the code.
-- Race-free as a foreign key is: a writer of results holds its parents' key-share locks until it
-- commits, so a concurrent delete waits for it and then (a new statement snapshot in the guard)
-- sees its rows; a delete that came first makes the writer's lock skip the row (read committed)
-- or fail to serialise (repeatable read), and its check then refuses the statement.

ALTER TABLE results
    DROP CONSTRAINT results_sample_code_fkey,
    DROP CONSTRAINT results_item_code_fkey,
    DROP CONSTRAINT results_lab_code_fkey;

CREATE FUNCTION results_check_references() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    ref record;
    unlocked bigint;
    missing text;
BEGIN
    FOR ref IN SELECT * FROM (VALUES ('samples', 'sample_code'), ('test_items', 'item_code'),
                                     ('labs', 'lab_code')) AS v (parent, code) LOOP
        -- One pass over the statement's rows per parent: the distinct codes, their parent rows
        -- locked (a hash join, not a probe per row), and how many codes found no parent.
        EXECUTE format(
            'WITH d AS MATERIALIZED (SELECT DISTINCT %2$I AS code FROM new_rows),
                  l AS (SELECT p.%2$I FROM %1$I p JOIN d ON d.code = p.%2$I FOR KEY SHARE OF p)
             SELECT (SELECT count(*) FROM d) - (SELECT count(*) FROM l)',
            ref.parent, ref.code) INTO unlocked;
        IF unlocked > 0 THEN
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

-- An UPDATE is checked over every row it wrote: intake's updates only supersede versions (a few
-- rows per correction), so telling changed codes apart would save nothing.
CREATE TRIGGER results_references_insert
    AFTER INSERT ON results REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION results_check_references();
CREATE TRIGGER results_references_update
    AFTER UPDATE ON results REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION results_check_references();

-- The parents' side: a code still referenced by a result cannot go away. TG_ARGV[0] is the code
-- column (the same name in the parent and in results).
CREATE FUNCTION refuse_referenced_code_removal() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    code text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT 1 FROM results) THEN
            RAISE EXCEPTION 'cannot truncate %: results refer to it', TG_TABLE_NAME
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NULL;
    END IF;
    -- Codes that are gone after the statement (an UPDATE keeping its code removes none), and are
    -- still used by a result. A new statement, so a new snapshot: a writer of results that held
    -- the row's key-share lock has committed by now and its rows are seen.
    IF TG_OP = 'DELETE' THEN
        EXECUTE format(
            'SELECT o.%1$I FROM old_rows o WHERE EXISTS (SELECT 1 FROM results r WHERE r.%1$I = o.%1$I) LIMIT 1',
            TG_ARGV[0]) INTO code;
    ELSE
        EXECUTE format(
            'SELECT o.%1$I FROM old_rows o
             WHERE NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.%1$I = o.%1$I)
               AND EXISTS (SELECT 1 FROM results r WHERE r.%1$I = o.%1$I) LIMIT 1',
            TG_ARGV[0]) INTO code;
    END IF;
    IF code IS NOT NULL THEN
        RAISE EXCEPTION '% % is still referenced by results (% refused)', TG_ARGV[0], code, TG_OP
            USING ERRCODE = 'foreign_key_violation', TABLE = TG_TABLE_NAME;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER samples_referenced_delete AFTER DELETE ON samples REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_referenced_code_removal('sample_code');
CREATE TRIGGER samples_referenced_update AFTER UPDATE ON samples
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_referenced_code_removal('sample_code');
CREATE TRIGGER samples_referenced_truncate BEFORE TRUNCATE ON samples
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_referenced_code_removal('sample_code');

CREATE TRIGGER test_items_referenced_delete AFTER DELETE ON test_items REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_referenced_code_removal('item_code');
CREATE TRIGGER test_items_referenced_update AFTER UPDATE ON test_items
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_referenced_code_removal('item_code');
CREATE TRIGGER test_items_referenced_truncate BEFORE TRUNCATE ON test_items
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_referenced_code_removal('item_code');

CREATE TRIGGER labs_referenced_delete AFTER DELETE ON labs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_referenced_code_removal('lab_code');
CREATE TRIGGER labs_referenced_update AFTER UPDATE ON labs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_referenced_code_removal('lab_code');
CREATE TRIGGER labs_referenced_truncate BEFORE TRUNCATE ON labs
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_referenced_code_removal('lab_code');

-- The independence rule of 0001, same meaning, fewer probes: a lab's current results on one
-- sample item may not carry two roles (any two, except that 0001 never compared a retest with an
-- existing arbitration, and neither does this). One index probe per new row instead of up to
-- three, and the sample's original lab in a probe of its own: half the time of 0001's form on a
-- 200 000-row load.
CREATE OR REPLACE FUNCTION results_check_independent_lab() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.role, n.sample_code, n.item_code, n.lab_code INTO bad
    FROM new_rows n
    WHERE n.superseded_at IS NULL AND EXISTS (
        SELECT 1 FROM results r
        WHERE r.sample_code = n.sample_code AND r.item_code = n.item_code AND r.lab_code = n.lab_code
          AND r.superseded_at IS NULL AND r.role <> n.role
          AND NOT (n.role = 'retest' AND r.role = 'arbitration'))
    LIMIT 1;
    IF NOT FOUND THEN
        SELECT n.role, n.sample_code, n.item_code, n.lab_code INTO bad
        FROM new_rows n JOIN samples s ON s.sample_code = n.sample_code AND s.original_lab_code = n.lab_code
        WHERE n.superseded_at IS NULL AND n.role IN ('retest', 'arbitration')
        LIMIT 1;
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION 'a % result of sample % item % by lab %, which also tested it in another role',
            bad.role, bad.sample_code, bad.item_code, bad.lab_code
            USING ERRCODE = 'check_violation', CONSTRAINT = 'results_retest_by_other_lab';
    END IF;
    RETURN NULL;
END
$$;
