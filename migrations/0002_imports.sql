-- Data intake: a record of every import, its rejected rows, the in-place changes it made to
-- reference data, and the lab indicator tables the grading policy reads besides retest pairs
-- (proficiency testing, timeliness, complaints, audit findings, report findings).

CREATE TABLE imports (
    import_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL,
    source      text NOT NULL,
    user_name   text,
    file_name   text,
    -- SHA-256 of the file's bytes (of the canonical JSON for a JSON body).
    checksum    text,
    format      text,
    encoding    text,
    status      text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'completed', 'failed')),
    rows        integer NOT NULL DEFAULT 0,
    accepted    integer NOT NULL DEFAULT 0,
    rejected    integer NOT NULL DEFAULT 0,
    duplicates  integer NOT NULL DEFAULT 0,
    corrections integer NOT NULL DEFAULT 0,
    error       text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX imports_started ON imports (started_at DESC, import_id DESC);
CREATE INDEX imports_checksum ON imports (checksum);

-- One line per problem: a row with two problems has two lines, both with the same raw row.
-- row_number counts the header as row 1, as a spreadsheet shows it.
CREATE TABLE import_rejects (
    import_id   bigint NOT NULL REFERENCES imports (import_id) ON DELETE CASCADE,
    row_number  integer NOT NULL,
    column_name text,
    value       text,
    reason      text NOT NULL,
    raw         jsonb
);
CREATE INDEX import_rejects_import ON import_rejects (import_id, row_number);

-- Reference data and indicator events are corrected in place; the old and new rows are kept here.
CREATE TABLE import_changes (
    import_id  bigint NOT NULL REFERENCES imports (import_id) ON DELETE CASCADE,
    kind       text NOT NULL,
    key        text NOT NULL,
    before     jsonb NOT NULL,
    after      jsonb NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX import_changes_import ON import_changes (import_id);
CREATE INDEX import_changes_key ON import_changes (kind, key);

-- Proficiency testing (能力验证): one line per lab, scheme round and (optionally) item.
CREATE TABLE pt_results (
    pt_result_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lab_code     text NOT NULL REFERENCES labs (lab_code),
    provider     text,
    scheme_code  text NOT NULL CHECK (scheme_code <> ''),
    round_code   text NOT NULL CHECK (round_code <> ''),
    round_date   date NOT NULL,
    item_code    text REFERENCES test_items (item_code),
    z_score      double precision CHECK (labeval_is_finite(z_score)),
    en_score     double precision CHECK (labeval_is_finite(en_score)),
    outcome      text CHECK (outcome IN ('satisfactory', 'questionable', 'unsatisfactory')),
    import_id    bigint,
    CHECK (z_score IS NOT NULL OR en_score IS NOT NULL OR outcome IS NOT NULL)
);
CREATE UNIQUE INDEX pt_results_key ON pt_results (lab_code, scheme_code, round_code, COALESCE(item_code, ''));

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

CREATE TABLE lab_complaints (
    lab_code     text NOT NULL REFERENCES labs (lab_code),
    complaint_no text NOT NULL CHECK (complaint_no <> ''),
    received_on  date NOT NULL,
    upheld       boolean NOT NULL,
    subject      text,
    import_id    bigint,
    PRIMARY KEY (lab_code, complaint_no)
);

CREATE TABLE lab_audit_findings (
    lab_code    text NOT NULL REFERENCES labs (lab_code),
    finding_no  text NOT NULL CHECK (finding_no <> ''),
    found_on    date NOT NULL,
    severity    text NOT NULL CHECK (severity IN ('minor', 'major', 'critical')),
    description text,
    import_id   bigint,
    PRIMARY KEY (lab_code, finding_no)
);

-- Inaccurate (不实) or falsified (虚假) test reports, SAMR Order 39 arts. 13–14.
CREATE TABLE lab_report_findings (
    lab_code    text NOT NULL REFERENCES labs (lab_code),
    report_no   text NOT NULL CHECK (report_no <> ''),
    found_on    date NOT NULL,
    finding     text NOT NULL CHECK (finding IN ('inaccurate', 'falsified')),
    decision_no text,
    description text,
    import_id   bigint,
    PRIMARY KEY (lab_code, report_no)
);
