-- Reconcile's blast radius (docs/ARCHITECTURE.md#blast-radius): how each finished run ended.
-- `applied` acted on everything it decided; `dry_run` changed nothing; `refused` would have taken
-- more actions judged from an absence (orphan deletes, lost marks) than RECONCILE_MAX_DESTRUCTIVE
-- allows, so it took none of them (they are in `actions`, held back) and took only the rest. NULL
-- while a run is unfinished.
ALTER TABLE reconcile_runs ADD COLUMN outcome text
    CHECK (outcome IN ('applied', 'dry_run', 'refused'));
UPDATE reconcile_runs SET outcome = CASE WHEN dry_run THEN 'dry_run' ELSE 'applied' END
    WHERE finished_at IS NOT NULL;
-- The dashboard and the metrics read the newest finished run that was not a dry run.
CREATE INDEX reconcile_runs_newest_real ON reconcile_runs (started_at DESC, id DESC)
    WHERE finished_at IS NOT NULL AND NOT dry_run;
