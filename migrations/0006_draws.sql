-- 双随机 draws and sample-to-lab assignments, stored so anyone can re-derive them: the request,
-- the candidates with the weights they had, the seed, the algorithm and the policy hash beside
-- the result. Never updated: a draw is a record of what was decided.
CREATE TABLE draws (
    draw_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('draw', 'assignment')),
    -- The request as received (after defaults), JSON.
    request     jsonb NOT NULL,
    -- kind 'draw': a list of {lab_code, class, weight, province}; kind 'assignment': an object
    -- mapping each product category to such a list.
    candidates  jsonb NOT NULL,
    -- Non-negative and below 2^63, so it fits bigint (server-chosen seeds come from secrets).
    seed        bigint NOT NULL CHECK (seed >= 0),
    algorithm   text NOT NULL,
    policy_hash text NOT NULL,
    -- kind 'draw': the chosen lab codes in draw order; kind 'assignment': [{sample_code, lab_code}].
    result      jsonb NOT NULL,
    actor       text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX draws_created ON draws (created_at DESC, draw_id DESC);
