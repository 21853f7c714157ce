-- Which job last wrote each mirrored row: null when the resync or the self-heal wrote it. The
-- change feed names the job behind a change from here; operators can trace a row to its event.
alter table hotels add column last_job_id bigint;
alter table users add column last_job_id bigint;
alter table memberships add column last_job_id bigint;
