-- Retest plans (选取部分产品开展复验): which categories, how many retests per lab and which samples.
-- A plan keeps everything needed to re-derive its random choice (the candidates per lab, the
-- retests per lab and the seed), so anyone can check that the samples were not picked by hand.

CREATE TABLE retest_plans (
    plan_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text,
    -- The grading run whose evidence ranked the labs (null: no succeeded run existed).
    run_id       bigint REFERENCES grading_runs (run_id),
    policy_hash  text NOT NULL,
    seed         bigint NOT NULL CHECK (seed >= 0),
    budget       integer NOT NULL CHECK (budget >= 1),
    period_start date NOT NULL,
    period_end   date NOT NULL,
    CHECK (period_start <= period_end),
    -- The request as received, the power calculation, the category ranking, the allocation.
    request      jsonb NOT NULL,
    power        jsonb NOT NULL,
    ranking      jsonb NOT NULL,
    allocation   jsonb NOT NULL,
    -- {lab_code: [sample_code, ...]} sorted: the pool each lab's samples were drawn from.
    candidates   jsonb NOT NULL
);

CREATE TABLE retest_plan_samples (
    plan_id           bigint NOT NULL REFERENCES retest_plans (plan_id) ON DELETE CASCADE,
    sample_code       text NOT NULL REFERENCES samples (sample_code),
    original_lab_code text NOT NULL REFERENCES labs (lab_code),
    category_code     text NOT NULL REFERENCES product_categories (category_code),
    enterprise        text,
    reason            text NOT NULL,
    PRIMARY KEY (plan_id, sample_code)
);
CREATE INDEX retest_plan_samples_lab ON retest_plan_samples (plan_id, original_lab_code);
