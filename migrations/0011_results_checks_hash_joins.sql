-- The independence check of results (0009) planned for a bulk insert as for one row.
--
-- Its lookups ended in LIMIT 1: the planner then costs a plan by how soon it expects to meet the
-- first offending row, and it expects some (no statistics on a statement's new rows), so it
-- chose an index probe into results (and into samples) for every new row. A valid load has no
-- offending row, so every probe ran: 12 s of a million-row import (EXPLAIN ANALYZE via
-- auto_explain, 1 000 000 Heap Fetches). Without the LIMIT the planner costs the whole lookup:
-- hash joins for a large statement, index probes for a small one (it knows how many rows the
-- statement wrote). PL/pgSQL's SELECT INTO still stops at the first row found. Same error.
--
-- And the rule completed: the original, the retest and the arbitration of one sample item are by
-- three different labs (the arbiter is a third lab). 0001 and 0009 let a retest stand beside an
-- existing arbitration by the same lab, so a lab that had arbitrated could afterwards be stored as
-- the retest lab of the same sample item; that exception is gone. So: a lab's current results on
-- one sample item may not carry two roles, and a retest or arbitration may not come from the
-- sample's original lab. Rows stored before this migration are not re-checked (the trigger sees
-- new and updated rows).
CREATE OR REPLACE FUNCTION results_check_independent_lab() RETURNS trigger
    LANGUAGE plpgsql
    -- Room for the hash of a large statement's rows in memory.
    SET work_mem = '64MB'
    AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.role, n.sample_code, n.item_code, n.lab_code INTO bad
    FROM new_rows n
    WHERE n.superseded_at IS NULL AND EXISTS (
        SELECT 1 FROM results r
        WHERE r.sample_code = n.sample_code AND r.item_code = n.item_code AND r.lab_code = n.lab_code
          AND r.superseded_at IS NULL AND r.role <> n.role);
    IF NOT FOUND THEN
        SELECT n.role, n.sample_code, n.item_code, n.lab_code INTO bad
        FROM new_rows n JOIN samples s ON s.sample_code = n.sample_code AND s.original_lab_code = n.lab_code
        -- One condition the planner cannot see into: as two, it multiplies their default
        -- selectivities (a statement's new rows have no statistics) and expects 50 of a million
        -- rows to pass, then probes samples once per row that does.
        WHERE COALESCE(n.superseded_at IS NULL AND n.role IN ('retest', 'arbitration'), false);
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION 'a % result of sample % item % by lab %, which also tested it in another role',
            bad.role, bad.sample_code, bad.item_code, bad.lab_code
            USING ERRCODE = 'check_violation', CONSTRAINT = 'results_retest_by_other_lab';
    END IF;
    RETURN NULL;
END
$$;
