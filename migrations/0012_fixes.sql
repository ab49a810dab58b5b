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

-- A reject line keeps its reason as English text (the CSV of rejects and the API give it as
-- stored) and now, beside it, the kind of problem as a code with its arguments (the column's
-- allowed values, the item's unit, the row it duplicates, ...), so that the pages say the reason
-- in the reader's language by its code instead of by recognising the English words. Lines
-- written before this migration have no code: they are shown as stored.
ALTER TABLE import_rejects ADD COLUMN reason_code text, ADD COLUMN reason_args jsonb;
