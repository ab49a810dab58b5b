-- results' primary key is its natural key, (sample_code, item_code, lab_code), the unique index
-- 0015 made; the surrogate result_id keeps its values and its identity generator but no index.
--
-- Why: every row loaded paid for two B-trees. The surrogate key's served one query, the newest
-- result_id (labeval.db.lab_charts.pairs_version, the version of the pairs a cached chart was
-- drawn from); no statement looks a result up by result_id (a grading run's pairs are read whole
-- and sorted, a lab's results page filters by lab and sorts its rows). Measured on a direct load
-- of a million results, alternating, with the trigger suspended: wall 4.06 and 4.26 s with the
-- index, 3.68 and 3.82 s without (server CPU 2.97, 3.17 against 2.51, 2.77 s).
--
-- result_id stays unique as it is made: GENERATED ALWAYS by its sequence, so no writer gives
-- one of its own without OVERRIDING SYSTEM VALUE, which nothing in labeval uses; the versions a
-- correction replaced keep theirs in result_versions, whose primary key it remains.
ALTER TABLE results DROP CONSTRAINT results_pkey;
-- Same name as the index: a refused row still names results_one_role_per_lab.
ALTER TABLE results ADD CONSTRAINT results_one_role_per_lab PRIMARY KEY USING INDEX results_one_role_per_lab;

-- What the newest result_id said, without reading results: a counter every statement that
-- changes results moves (in its own transaction, so it reads as committed, like the rows). It
-- also moves on an UPDATE, a DELETE or a TRUNCATE, which the newest id did not show.
CREATE TABLE results_changes (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    statements bigint NOT NULL
);
INSERT INTO results_changes (one, statements) VALUES (true, 0);

CREATE FUNCTION results_count_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE results_changes SET statements = statements + 1;
    RETURN NULL;
END;
$$;
-- Once per statement: a COPY of 100 000 rows moves it once.
CREATE TRIGGER results_count_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON results
    FOR EACH STATEMENT EXECUTE FUNCTION results_count_change();
