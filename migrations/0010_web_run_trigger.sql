-- A grading run started from the officers' pages says so: trigger 'web' (the actor names the
-- person, user:<id>:<username>), beside the API's 'api', so the run history and the metrics tell
-- a person's click from an integrator's call.
ALTER TABLE grading_runs DROP CONSTRAINT grading_runs_trigger_check;
ALTER TABLE grading_runs ADD CONSTRAINT grading_runs_trigger_check
    CHECK (trigger IN ('cli', 'schedule', 'api', 'web', 'demo', 'test'));
