-- Schema v1: reference data, results with versioned history, grading runs.
-- Codes are the natural keys the supervision-sampling system already uses, so they are the
-- primary keys; results get a surrogate id because one natural key has many versions.

CREATE FUNCTION labeval_is_finite(x double precision) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    -- PostgreSQL's float8 admits NaN and ±Infinity; a measured value never is one.
    RETURN x IS NULL OR (x <> 'NaN'::float8 AND x <> 'Infinity'::float8 AND x <> '-Infinity'::float8);

CREATE TABLE product_categories (
    category_code text PRIMARY KEY CHECK (category_code <> ''),
    name          text NOT NULL,
    name_en       text
);

CREATE TABLE labs (
    lab_code         text PRIMARY KEY CHECK (lab_code <> ''),
    name             text NOT NULL,
    province         text,
    accreditation_no text,
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'suspended', 'revoked')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE lab_scopes (
    lab_code      text NOT NULL REFERENCES labs (lab_code) ON DELETE CASCADE,
    category_code text NOT NULL REFERENCES product_categories (category_code),
    PRIMARY KEY (lab_code, category_code)
);

CREATE TABLE test_items (
    item_code          text PRIMARY KEY CHECK (item_code <> ''),
    category_code      text NOT NULL REFERENCES product_categories (category_code),
    name               text NOT NULL,
    name_en            text,
    unit               text,
    kind               text NOT NULL CHECK (kind IN ('quantitative', 'qualitative')),
    method             text,
    repeatability_sd   double precision CHECK (labeval_is_finite(repeatability_sd) AND repeatability_sd >= 0),
    reproducibility_sd double precision CHECK (labeval_is_finite(reproducibility_sd) AND reproducibility_sd > 0),
    precision_model    text CHECK (precision_model IN ('absolute', 'relative', 'horwitz')),
    -- level × horwitz_scale = mass fraction (1e-6 for mg/kg); only used by the Horwitz model.
    horwitz_scale      double precision CHECK (labeval_is_finite(horwitz_scale) AND horwitz_scale > 0),
    lower_limit        double precision CHECK (labeval_is_finite(lower_limit)),
    upper_limit        double precision CHECK (labeval_is_finite(upper_limit)),
    lod                double precision CHECK (labeval_is_finite(lod) AND lod >= 0),
    CHECK (lower_limit IS NULL OR upper_limit IS NULL OR lower_limit <= upper_limit),
    -- σr ≤ σR by definition of reproducibility (ISO 5725-1).
    CHECK (repeatability_sd IS NULL OR reproducibility_sd IS NULL OR repeatability_sd <= reproducibility_sd),
    -- A quantitative item needs a precision model to be scored.
    CHECK (kind = 'qualitative' OR precision_model IS NOT NULL),
    CHECK (precision_model IS DISTINCT FROM 'horwitz' OR horwitz_scale IS NOT NULL),
    CHECK (precision_model NOT IN ('absolute', 'relative') OR reproducibility_sd IS NOT NULL)
);
CREATE INDEX test_items_category ON test_items (category_code);

CREATE TABLE samples (
    sample_code       text PRIMARY KEY CHECK (sample_code <> ''),
    category_code     text NOT NULL REFERENCES product_categories (category_code),
    enterprise        text,
    sampled_on        date,
    province          text,
    original_lab_code text REFERENCES labs (lab_code)
);

CREATE TABLE results (
    result_id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sample_code          text NOT NULL REFERENCES samples (sample_code),
    item_code            text NOT NULL REFERENCES test_items (item_code),
    lab_code             text NOT NULL REFERENCES labs (lab_code),
    role                 text NOT NULL CHECK (role IN ('original', 'retest', 'arbitration')),
    value                double precision CHECK (labeval_is_finite(value)),
    censored             boolean NOT NULL DEFAULT false,
    censor_limit         double precision CHECK (labeval_is_finite(censor_limit) AND censor_limit >= 0),
    raw_value            text,
    unit                 text,
    expanded_uncertainty double precision
                         CHECK (labeval_is_finite(expanded_uncertainty) AND expanded_uncertainty >= 0),
    coverage_k           double precision CHECK (labeval_is_finite(coverage_k) AND coverage_k > 0),
    replicates           integer CHECK (replicates >= 1),
    verdict              text CHECK (verdict IN ('pass', 'fail')),
    decision_rule        text CHECK (decision_rule IN ('simple', 'guard_band')),
    reported_on          date,
    -- Corrections never overwrite: a new version is inserted and the old one gets superseded_at.
    version              integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    superseded_at        timestamptz,
    import_id            bigint,
    created_at           timestamptz NOT NULL DEFAULT now(),
    -- A censored value carries no number; an uncensored quantitative one carries one.
    CHECK (NOT censored OR value IS NULL),
    UNIQUE (sample_code, item_code, role, lab_code, version)
);
-- One current version per natural key.
CREATE UNIQUE INDEX results_current_key ON results (sample_code, item_code, role, lab_code)
    WHERE superseded_at IS NULL;

-- A retest or arbitration by the lab that did the original test is no retest at all
-- (抽检分离 / independent re-examination). Enforced in the database so that no path around the
-- intake code can store one. A statement-level trigger over the transition table checks a bulk
-- load of a million rows in one set-based query instead of three index probes per row.
CREATE FUNCTION results_check_independent_lab() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.role, n.sample_code, n.item_code, n.lab_code INTO bad
    FROM new_rows n
    WHERE n.superseded_at IS NULL AND (
        (n.role IN ('retest', 'arbitration') AND (
            EXISTS (SELECT 1 FROM results r
                    WHERE r.sample_code = n.sample_code AND r.item_code = n.item_code
                      AND r.role = 'original' AND r.lab_code = n.lab_code AND r.superseded_at IS NULL)
            OR EXISTS (SELECT 1 FROM samples s
                       WHERE s.sample_code = n.sample_code AND s.original_lab_code = n.lab_code)))
        OR (n.role = 'original' AND EXISTS (
            SELECT 1 FROM results r
            WHERE r.sample_code = n.sample_code AND r.item_code = n.item_code
              AND r.role IN ('retest', 'arbitration') AND r.lab_code = n.lab_code
              AND r.superseded_at IS NULL))
        OR (n.role = 'arbitration' AND EXISTS (
            SELECT 1 FROM results r
            WHERE r.sample_code = n.sample_code AND r.item_code = n.item_code
              AND r.role = 'retest' AND r.lab_code = n.lab_code AND r.superseded_at IS NULL)))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'a % result of sample % item % by lab %, which also tested it in another role',
            bad.role, bad.sample_code, bad.item_code, bad.lab_code
            USING ERRCODE = 'check_violation', CONSTRAINT = 'results_retest_by_other_lab';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER results_independent_lab_insert
    AFTER INSERT ON results REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION results_check_independent_lab();
CREATE TRIGGER results_independent_lab_update
    AFTER UPDATE ON results REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION results_check_independent_lab();

CREATE TABLE grading_runs (
    run_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    as_of          date NOT NULL,
    trigger        text NOT NULL CHECK (trigger IN ('cli', 'schedule', 'api', 'demo', 'test')),
    policy_name    text NOT NULL,
    policy_version text NOT NULL,
    policy_hash    text NOT NULL,
    policy         jsonb NOT NULL,
    -- Digest of the pairs the run scored, so a re-run on the same data can be checked.
    data_hash      text,
    n_pairs        integer NOT NULL DEFAULT 0,
    n_labs         integer NOT NULL DEFAULT 0,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE INDEX grading_runs_as_of ON grading_runs (as_of DESC, run_id DESC);

CREATE TABLE lab_grades (
    run_id         bigint NOT NULL REFERENCES grading_runs (run_id) ON DELETE CASCADE,
    lab_code       text NOT NULL REFERENCES labs (lab_code),
    score          double precision CHECK (labeval_is_finite(score) AND score BETWEEN 0 AND 100),
    class          text NOT NULL CHECK (class IN ('I', 'II', 'III', 'IV')),
    previous_class text CHECK (previous_class IN ('I', 'II', 'III', 'IV')),
    change         text NOT NULL CHECK (change IN ('up', 'down', 'held', 'new')),
    pairs          integer NOT NULL DEFAULT 0,
    reasons        jsonb NOT NULL DEFAULT '[]',
    evidence       jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, lab_code)
);
CREATE INDEX lab_grades_lab ON lab_grades (lab_code, run_id DESC);
