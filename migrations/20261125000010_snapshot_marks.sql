-- A resync is a snapshot of Clerk: after one that listed at T (Clerk's clock, in ms), an event
-- older than T about something the snapshot covered changes nothing (crate::reconcile).
--
-- `snapshot_marks` holds T for the whole-instance listings that completed: 'hotels' (the
-- organizations listing), 'users', and 'memberships' (every hotel's memberships).
create table snapshot_marks (
    scope      text primary key check (scope in ('hotels', 'users', 'memberships')),
    listed_at  bigint not null,
    updated_at timestamptz not null default now()
);

-- T of the last listing of this one hotel's memberships (the self-heal lists them): memberships
-- of the hotel older than the greater of this and the 'memberships' mark are obsolete.
alter table hotels add column members_listed_at bigint;
