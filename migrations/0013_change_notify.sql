-- Replicas cache the answers of their busiest reads (eligibility per category, one lab's detail)
-- and the API keys they have authenticated. Every statement that changes a table those answers
-- are read from announces it on the channel labeval_changes (payload: the table's name), and
-- every replica listens there and drops its cached answers. A NOTIFY is delivered only when its
-- transaction commits, so a rolled-back change announces nothing.
--
-- Statement-level triggers: an import or a grading run that writes thousands of rows in one
-- statement (COPY included) sends one notification, and PostgreSQL folds identical ones of one
-- transaction into one.
CREATE FUNCTION labeval_announce_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('labeval_changes', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

-- What the eligibility list and a lab's detail are read from (labeval.db.draws.scoped_labs,
-- category_exists; labeval.db.labs.get_lab; labeval.db.overrides.active).
CREATE TRIGGER product_categories_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON product_categories
    FOR EACH STATEMENT EXECUTE FUNCTION labeval_announce_change();
CREATE TRIGGER labs_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON labs
    FOR EACH STATEMENT EXECUTE FUNCTION labeval_announce_change();
CREATE TRIGGER lab_scopes_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON lab_scopes
    FOR EACH STATEMENT EXECUTE FUNCTION labeval_announce_change();
CREATE TRIGGER grading_runs_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON grading_runs
    FOR EACH STATEMENT EXECUTE FUNCTION labeval_announce_change();
CREATE TRIGGER lab_grades_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON lab_grades
    FOR EACH STATEMENT EXECUTE FUNCTION labeval_announce_change();
CREATE TRIGGER grade_overrides_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON grade_overrides
    FOR EACH STATEMENT EXECUTE FUNCTION labeval_announce_change();

-- Keys: every column authentication reads, but not last_used_at, which authentication itself
-- writes (at most once a minute per key and replica) and which no cached answer depends on.
CREATE TRIGGER api_keys_announce
    AFTER INSERT OR DELETE OR TRUNCATE OR UPDATE OF name, role, prefix, secret_hmac, revoked_at ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION labeval_announce_change();
