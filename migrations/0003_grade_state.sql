-- What a grade carries into the next run and into lab selection.
-- consecutive_qualifying drives hysteresis (an upgrade needs N qualifying runs in a row), so it
-- must survive between runs; selection_weight/eligible are what the tender feed and draws read.
ALTER TABLE lab_grades
    ADD COLUMN consecutive_qualifying integer NOT NULL DEFAULT 0 CHECK (consecutive_qualifying >= 0),
    ADD COLUMN sufficient_evidence    boolean NOT NULL DEFAULT false,
    ADD COLUMN selection_weight       double precision CHECK (labeval_is_finite(selection_weight) AND selection_weight >= 0),
    ADD COLUMN eligible               boolean NOT NULL DEFAULT true;

-- Report timeliness, one row per test report: when it was due and when it was issued (null while
-- still outstanding). Per-report rows rather than per-period counts, so any window can be
-- evaluated and an outstanding overdue report counts as late.
CREATE TABLE lab_reports (
    lab_code    text NOT NULL REFERENCES labs (lab_code),
    report_no   text NOT NULL CHECK (report_no <> ''),
    due_on      date NOT NULL,
    reported_on date,
    import_id   bigint,
    PRIMARY KEY (lab_code, report_no)
);
CREATE INDEX lab_reports_due ON lab_reports (due_on);
