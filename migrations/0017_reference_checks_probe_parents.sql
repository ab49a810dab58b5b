-- The trigger on results finds each parent by its index, once per distinct code of the statement,
-- instead of joining the statement's rows with the whole parent table.
--
-- Why: since intake loads a clean file directly (each batch of 100 000 rows its own COPY, so its
-- own run of this trigger), the hash joins of 0014-0016 read the whole of `samples` once per batch:
-- a cost that grows with the register times the number of batches. On the national data set a
-- load of 3 M result rows spent 17 s of server CPU against 4.3 s for 1 M, and a load of 20 M rows
-- (3.4 M samples, 205 batches) ran for over eight minutes before it was stopped. A lookup through
-- the primary key per distinct code costs the same for a batch whatever the size of the register.
--
-- How the planner is kept to that: a LATERAL subquery with LIMIT 1 is never flattened into a
-- join, so it runs once per outer row through the index. The register rule, which needs the
-- statement's rows again, joins them with the (sample, original lab) pairs found that way, a set
-- no larger than the batch's distinct samples, and counts the matches (a count, not EXISTS or
-- LIMIT, so that the planner does not pick a nested loop over the statement's rows in the hope
-- of an early match). Same errors, same order of the parents, same locks as 0016.

CREATE OR REPLACE FUNCTION results_check_writes() RETURNS trigger
    LANGUAGE plpgsql
    -- Room for the hashes of a large statement's distinct codes.
    SET work_mem = '64MB'
    AS $$
DECLARE
    sample_codes text[];
    item_codes text[];
    lab_codes text[];
    retested text[];
    register_samples text[];
    register_labs text[];
    offending bigint;
    codes text[];
    ref record;
    found_parents bigint;
    missing text;
    bad record;
    -- Under read committed the parents are not locked (0016).
    lock_clause text := CASE WHEN current_setting('transaction_isolation') = 'read committed' THEN ''
                             ELSE 'FOR KEY SHARE OF p' END;
BEGIN
    -- One pass over the statement's rows: the distinct codes of each parent, and the samples
    -- with a retest or arbitration among them (the only ones the register rule concerns).
    -- GROUPING() tells the sets apart: a bit is 1 for an argument the set does not group by.
    SELECT coalesce(array_agg(d.sample_code) FILTER (WHERE d.g = 3), '{}'),
           coalesce(array_agg(d.item_code) FILTER (WHERE d.g = 5), '{}'),
           coalesce(array_agg(d.lab_code) FILTER (WHERE d.g = 6), '{}'),
           coalesce(array_agg(d.sample_code) FILTER (WHERE d.g = 3 AND d.retested), '{}')
    INTO sample_codes, item_codes, lab_codes, retested
    FROM (SELECT n.sample_code, n.item_code, n.lab_code, bool_or(n.role <> 'original') AS retested,
                 GROUPING(n.sample_code, n.item_code, n.lab_code) AS g
          FROM new_rows n
          GROUP BY GROUPING SETS ((n.sample_code), (n.item_code), (n.lab_code))) d;
    FOR ref IN SELECT * FROM (VALUES (1, 'samples', 'sample_code'), (2, 'test_items', 'item_code'),
                                     (3, 'labs', 'lab_code')) AS v (i, parent, code) LOOP
        codes := CASE ref.i WHEN 1 THEN sample_codes WHEN 2 THEN item_codes ELSE lab_codes END;
        EXECUTE format(
            'SELECT count(*) FROM unnest($1::text[]) AS d (code),
                 LATERAL (SELECT 1 FROM %1$I p WHERE p.%2$I = d.code LIMIT 1 %3$s) l',
            ref.parent, ref.code, lock_clause) INTO found_parents USING codes;
        IF found_parents < cardinality(codes) THEN
            EXECUTE format(
                'SELECT n.%2$I FROM new_rows n WHERE NOT EXISTS (SELECT 1 FROM %1$I p WHERE p.%2$I = n.%2$I) LIMIT 1',
                ref.parent, ref.code) INTO missing;
            RAISE EXCEPTION 'a result with % % which is not in %', ref.code, missing, ref.parent
                USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'results_' || ref.code || '_ref';
        END IF;
    END LOOP;
    -- The register's original lab of each retested sample that names one, by its key.
    SELECT coalesce(array_agg(d.code), '{}'), coalesce(array_agg(x.original_lab_code), '{}')
    INTO register_samples, register_labs
    FROM unnest(retested) AS d (code),
         LATERAL (SELECT s.original_lab_code FROM samples s WHERE s.sample_code = d.code LIMIT 1) x
    WHERE x.original_lab_code IS NOT NULL;
    IF cardinality(register_samples) > 0 THEN
        SELECT count(*) INTO offending
        FROM new_rows n
        JOIN unnest(register_samples, register_labs) AS r (sample_code, lab_code)
          ON r.sample_code = n.sample_code AND r.lab_code = n.lab_code
        WHERE n.role <> 'original';
        IF offending > 0 THEN
            -- The offending row itself, for the message (only on the way to an error).
            SELECT n.role, n.sample_code, n.item_code, n.lab_code INTO bad
            FROM new_rows n
            JOIN unnest(register_samples, register_labs) AS r (sample_code, lab_code)
              ON r.sample_code = n.sample_code AND r.lab_code = n.lab_code
            WHERE n.role <> 'original'
            LIMIT 1;
            RAISE EXCEPTION 'a % result of sample % item % by lab %, which also tested it in another role',
                bad.role, bad.sample_code, bad.item_code, bad.lab_code
                USING ERRCODE = 'check_violation', CONSTRAINT = 'results_retest_by_other_lab';
        END IF;
    END IF;
    RETURN NULL;
END
$$;
