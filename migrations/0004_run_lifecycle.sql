-- Grading runs an officer can trust: a lifecycle per run, grades visible only for succeeded
-- runs, officers' overrides with an expiry, and an append-only outbox of grade-change events.

-- Lifecycle. A run row is committed as 'running' before it reads anything; its grades are
-- written in the same transaction that sets 'succeeded', so a run that fails or whose process
-- dies leaves no grades. A 'running' row whose process died is set to 'abandoned' by the next
-- run (or server start) that holds the run lock.
ALTER TABLE grading_runs
    ADD COLUMN status       text NOT NULL DEFAULT 'running'
                            CHECK (status IN ('running', 'succeeded', 'failed', 'abandoned')),
    ADD COLUMN actor        text,
    -- Evaluation window: pairs completed in [window_start, window_end] are evidence.
    ADD COLUMN window_start date,
    ADD COLUMN window_end   date,
    ADD COLUMN code_version text,
    ADD COLUMN error        text,
    -- The read time: the run read the data as committed at this instant (it takes SHARE locks
    -- on the tables it reads first, so no write was in flight). Verify rebuilds that state.
    ADD COLUMN snapshot_at  timestamptz,
    -- Seconds spent reading, computing and writing.
    ADD COLUMN timings      jsonb NOT NULL DEFAULT '{}',
    -- Labs per class, e.g. {"I": 3, "II": 10}.
    ADD COLUMN class_counts jsonb NOT NULL DEFAULT '{}',
    -- SHA-256 over the canonical (sorted) encoding of every input: pairs, graded labs,
    -- indicator rows and the previous grades fed to hysteresis.
    ADD COLUMN input_digest text;

UPDATE grading_runs SET status = CASE WHEN finished_at IS NOT NULL THEN 'succeeded' ELSE 'abandoned' END;

ALTER TABLE grading_runs
    ADD CONSTRAINT grading_runs_finished CHECK ((status = 'running') = (finished_at IS NULL)),
    ADD CONSTRAINT grading_runs_error CHECK (status <> 'failed' OR error IS NOT NULL);

-- The advisory lock keeps runs one at a time; this index makes a second 'running' row
-- impossible even for a writer that skipped the lock.
CREATE UNIQUE INDEX grading_runs_one_running ON grading_runs ((true)) WHERE status = 'running';

-- The evaluation period of a run is its as_of date. Hysteresis reads the latest succeeded run
-- of an earlier period (as_of strictly before this run's), so a second run for the same date
-- re-uses the same previous grades and cannot count twice.
CREATE INDEX grading_runs_period ON grading_runs (as_of DESC, run_id DESC) WHERE status = 'succeeded';

-- When an indicator row was written, for rows written outside intake (intake rows are placed
-- in time by their import's finish). Verify needs it to leave out rows written after a run read
-- the data. Rows already present get the migration's time; runs before it have no read time
-- and are not verifiable anyway.
ALTER TABLE pt_results          ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE lab_reports         ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE lab_complaints      ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE lab_audit_findings  ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE lab_report_findings ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();

-- Officers' overrides: a class set by hand with a reason, valid through valid_until (inclusive),
-- then the computed class applies again. Never deleted: revoking keeps who, when and why.
CREATE TABLE grade_overrides (
    override_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lab_code      text NOT NULL REFERENCES labs (lab_code),
    class         text NOT NULL CHECK (class IN ('I', 'II', 'III', 'IV')),
    reason        text NOT NULL CHECK (btrim(reason) <> ''),
    valid_until   date NOT NULL,
    set_by        text NOT NULL CHECK (btrim(set_by) <> ''),
    set_at        timestamptz NOT NULL DEFAULT now(),
    revoked_by    text,
    revoked_at    timestamptz,
    revoke_reason text,
    -- When its expiry event was appended (set once, in the same transaction as the event).
    expired_at    timestamptz,
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL)),
    CHECK ((revoked_at IS NULL) = (revoke_reason IS NULL)),
    CHECK (revoke_reason IS NULL OR btrim(revoke_reason) <> ''),
    CHECK (revoked_at IS NULL OR expired_at IS NULL)
);
-- At most one open (neither revoked nor expired) override per lab.
CREATE UNIQUE INDEX grade_overrides_open ON grade_overrides (lab_code)
    WHERE revoked_at IS NULL AND expired_at IS NULL;
CREATE INDEX grade_overrides_lab ON grade_overrides (lab_code, override_id DESC);

-- Grade-change events (the outbox the tender feed reads with after=SEQ). seq must be strictly
-- increasing with no gaps, and a reader must never see seq N+1 committed before seq N.
-- A SEQUENCE gives neither: nextval() is not rolled back (gaps) and two writers may commit in
-- the opposite order of their numbers (a reader at after=N+1 would skip N for good). A
-- single-row counter updated in the writer's transaction gives both: the row lock is held to
-- commit, so writers are serialised in seq order and a rolled-back writer returns its numbers.
-- The cost, one writer at a time, is nothing next to a grading run or an officer's click.
CREATE TABLE grade_event_counter (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_seq bigint NOT NULL CHECK (last_seq >= 0)
);
INSERT INTO grade_event_counter (only_row, last_seq) VALUES (true, 0);

CREATE TABLE grade_events (
    seq             bigint PRIMARY KEY CHECK (seq >= 1),
    lab_code        text NOT NULL REFERENCES labs (lab_code),
    -- The effective class before the change (null: the lab had none).
    old_class       text CHECK (old_class IN ('I', 'II', 'III', 'IV')),
    -- The computed class after the change.
    new_class       text CHECK (new_class IN ('I', 'II', 'III', 'IV')),
    -- The class that applies after the change (an open override's, else the computed one).
    effective_class text CHECK (effective_class IN ('I', 'II', 'III', 'IV')),
    cause           text NOT NULL
                    CHECK (cause IN ('run', 'override_set', 'override_revoked', 'override_expired')),
    run_id          bigint REFERENCES grading_runs (run_id),
    override_id     bigint REFERENCES grade_overrides (override_id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((cause = 'run') = (run_id IS NOT NULL)),
    CHECK ((cause = 'run') = (override_id IS NULL))
);
CREATE INDEX grade_events_lab ON grade_events (lab_code, seq);

-- seq is assigned here rather than by the writer, so no insert path can skip the counter.
CREATE FUNCTION grade_events_assign_seq() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE grade_event_counter SET last_seq = last_seq + 1 RETURNING last_seq INTO NEW.seq;
    RETURN NEW;
END
$$;
CREATE TRIGGER grade_events_seq BEFORE INSERT ON grade_events
    FOR EACH ROW EXECUTE FUNCTION grade_events_assign_seq();

-- One refusal for every append-only table (grade_events here; the audit log later).
CREATE FUNCTION refuse_append_only_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER grade_events_no_update BEFORE UPDATE OR DELETE ON grade_events
    FOR EACH ROW EXECUTE FUNCTION refuse_append_only_change();
CREATE TRIGGER grade_events_no_truncate BEFORE TRUNCATE ON grade_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_append_only_change();
