-- A scheduled grading run records the fire time of the schedule it ran for. Every replica's
-- scheduler fires at the same minute; the one that runs first claims the period, and a replica
-- that fires later (after that run finished, so the run lock no longer refuses it) finds the
-- period taken and skips. An abandoned run (its process died) did not happen: the period is owed.
ALTER TABLE grading_runs ADD COLUMN scheduled_for timestamptz;
ALTER TABLE grading_runs ADD CONSTRAINT grading_runs_scheduled_for_check
    CHECK (scheduled_for IS NULL OR trigger = 'schedule');
-- The skip is decided under the run lock; this index is the database's own guarantee of it.
CREATE UNIQUE INDEX grading_runs_one_per_period ON grading_runs (scheduled_for)
    WHERE scheduled_for IS NOT NULL AND status <> 'abandoned';

-- The independence rule of 0001, 0009 and 0011, completed: the original, the retest and the
-- arbitration of one sample item are by three different labs (the arbiter is a third lab). The
-- earlier versions never compared a new retest with an existing arbitration by the same lab, so a
-- lab that had arbitrated could afterwards be stored as the retest lab of the same sample item.
-- Only that exception is gone; the lookups stay as 0011 planned them (no LIMIT, so a bulk insert
-- gets hash joins and a single row index probes). Rows stored before this migration are not
-- re-checked (the trigger sees new and updated rows).
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
        -- One condition, as in 0011: the planner then does not expect a handful of rows to pass.
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

-- A reject line keeps its reason as English text (the CSV of rejects and the API give it as
-- stored) and now, beside it, the kind of problem as a code with its arguments (the column's
-- allowed values, the item's unit, the row it duplicates, ...), so that the pages say the reason
-- in the reader's language by its code instead of by recognising the English words. Lines
-- written before this migration have no code: they are shown as stored.
ALTER TABLE import_rejects ADD COLUMN reason_code text, ADD COLUMN reason_args jsonb;
