-- Results' reference checks without row locks on the parents, under read committed.
--
-- Since 0009 a statement writing results locked every sample, item and lab it names (FOR KEY
-- SHARE, once per distinct code), as a foreign key does, so that a concurrent delete of a parent
-- waits for the writer and then sees its rows. Measured on a direct load of a million results
-- (each batch of 100 000 its own statement), those locks were about 9 % of the server's time:
-- every sample is locked once, its heap page written and the lock WAL-logged.
--
-- The same race is now closed from the other side, where it is rare: a statement that removes a
-- code (a DELETE, an UPDATE changing a code, a TRUNCATE of samples, test_items or labs) first
-- takes a SHARE lock on results. That waits for every transaction writing results to end, and
-- keeps new writers out until the remover ends; the remover's check then runs in a new snapshot
-- (read committed: one per statement) and sees every committed result. A writer that comes after
-- an uncommitted removal waits for it on its own lock on results, and its check, a new statement,
-- then finds the parent gone and refuses. Statements that remove no code take no lock.
--
-- Under repeatable read or serializable a writer's check reads the snapshot of its transaction's
-- first statement, which can predate a removal committed since: there the parents stay locked as
-- before, and such a race ends in an error the writer can retry (a serialization failure, as
-- with a foreign key, or a deadlock, since the remover now also waits on results).

CREATE OR REPLACE FUNCTION results_check_writes() RETURNS trigger
    LANGUAGE plpgsql
    -- Room for the hashes of a large statement's distinct codes.
    SET work_mem = '64MB'
    AS $$
DECLARE
    sample_codes text[];
    item_codes text[];
    lab_codes text[];
    by_original_lab boolean;
    codes text[];
    ref record;
    locked bigint;
    missing text;
    bad record;
    -- Under read committed the parents are not locked (see above).
    lock_clause text := CASE WHEN current_setting('transaction_isolation') = 'read committed' THEN ''
                             ELSE 'FOR KEY SHARE OF p' END;
BEGIN
    -- The statement's rows meet the register as they are grouped: a sample's group says whether
    -- any of its retests or arbitrations is by the sample's original lab. (Measured on a million
    -- rows: 0.2 s of server CPU less than grouping the (sample, lab) pairs of retests and
    -- arbitrations as a fourth set and joining those with the register afterwards.)
    -- GROUPING() tells the sets apart: a bit is 1 for an argument the set does not group by.
    SELECT coalesce(array_agg(d.sample_code) FILTER (WHERE d.g = 3), '{}'),
           coalesce(array_agg(d.item_code) FILTER (WHERE d.g = 5), '{}'),
           coalesce(array_agg(d.lab_code) FILTER (WHERE d.g = 6), '{}'),
           coalesce(bool_or(d.by_original_lab) FILTER (WHERE d.g = 3), false)
    INTO sample_codes, item_codes, lab_codes, by_original_lab
    FROM (SELECT n.sample_code, n.item_code, n.lab_code,
                 bool_or(n.role <> 'original' AND n.lab_code = s.original_lab_code) AS by_original_lab,
                 GROUPING(n.sample_code, n.item_code, n.lab_code) AS g
          FROM new_rows n LEFT JOIN samples s ON s.sample_code = n.sample_code
          GROUP BY GROUPING SETS ((n.sample_code), (n.item_code), (n.lab_code))) d;
    FOR ref IN SELECT * FROM (VALUES (1, 'samples', 'sample_code'), (2, 'test_items', 'item_code'),
                                     (3, 'labs', 'lab_code')) AS v (i, parent, code) LOOP
        codes := CASE ref.i WHEN 1 THEN sample_codes WHEN 2 THEN item_codes ELSE lab_codes END;
        EXECUTE format(
            'SELECT count(*) FROM (SELECT 1 FROM %1$I p JOIN unnest($1::text[]) AS d (code) ON d.code = p.%2$I
                                   %3$s) l',
            ref.parent, ref.code, lock_clause) INTO locked USING codes;
        IF locked < cardinality(codes) THEN
            EXECUTE format(
                'SELECT n.%2$I FROM new_rows n WHERE NOT EXISTS (SELECT 1 FROM %1$I p WHERE p.%2$I = n.%2$I) LIMIT 1',
                ref.parent, ref.code) INTO missing;
            RAISE EXCEPTION 'a result with % % which is not in %', ref.code, missing, ref.parent
                USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'results_' || ref.code || '_ref';
        END IF;
    END LOOP;
    IF by_original_lab THEN
        -- The offending row itself, for the message (a second read, only on the way to an error).
        SELECT n.role, n.sample_code, n.item_code, n.lab_code INTO bad
        FROM new_rows n JOIN samples s ON s.sample_code = n.sample_code AND s.original_lab_code = n.lab_code
        WHERE n.role <> 'original'
        LIMIT 1;
        RAISE EXCEPTION 'a % result of sample % item % by lab %, which also tested it in another role',
            bad.role, bad.sample_code, bad.item_code, bad.lab_code
            USING ERRCODE = 'check_violation', CONSTRAINT = 'results_retest_by_other_lab';
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION refuse_referenced_code_removal() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    code text;
    gone text[];
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        LOCK TABLE results IN SHARE MODE;
        IF EXISTS (SELECT 1 FROM results) THEN
            RAISE EXCEPTION 'cannot truncate %: results refer to it', TG_TABLE_NAME
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NULL;
    END IF;
    -- The codes gone after the statement (an UPDATE keeping its code removes none).
    IF TG_OP = 'DELETE' THEN
        EXECUTE format('SELECT array_agg(o.%1$I) FROM old_rows o', TG_ARGV[0]) INTO gone;
    ELSE
        EXECUTE format(
            'SELECT array_agg(o.%1$I) FROM old_rows o WHERE NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.%1$I = o.%1$I)',
            TG_ARGV[0]) INTO gone;
    END IF;
    IF gone IS NULL THEN
        RETURN NULL;
    END IF;
    -- Writers of results do not lock the parents they name: wait for those in flight, keep new
    -- ones out until this transaction ends, then look in a new snapshot, which sees their rows.
    LOCK TABLE results IN SHARE MODE;
    EXECUTE format(
        'SELECT d.code FROM unnest($1::text[]) AS d (code) WHERE EXISTS (SELECT 1 FROM results r WHERE r.%1$I = d.code) LIMIT 1',
        TG_ARGV[0]) INTO code USING gone;
    IF code IS NOT NULL THEN
        RAISE EXCEPTION '% % is still referenced by results (% refused)', TG_ARGV[0], code, TG_OP
            USING ERRCODE = 'foreign_key_violation', TABLE = TG_TABLE_NAME;
    END IF;
    RETURN NULL;
END
$$;
