-- What a grade carries into the next run and into lab selection.
-- consecutive_qualifying drives hysteresis (an upgrade needs N qualifying runs in a row), so it
-- must survive between runs; selection_weight/eligible are what the tender feed and draws read.
ALTER TABLE lab_grades
    ADD COLUMN consecutive_qualifying integer NOT NULL DEFAULT 0 CHECK (consecutive_qualifying >= 0),
    ADD COLUMN sufficient_evidence    boolean NOT NULL DEFAULT false,
    ADD COLUMN selection_weight       double precision CHECK (labeval_is_finite(selection_weight) AND selection_weight >= 0),
    ADD COLUMN eligible               boolean NOT NULL DEFAULT true;

