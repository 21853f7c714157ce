-- orgsync schema. Other tools rely on these tables and columns: extend, never rename.
--
-- Every domain row keeps `clerk_version`: the Clerk version (milliseconds since the epoch) it
-- was written from, i.e. the object's `updated_at`, or the event time for a delete. Writes only
-- win when they are newer, and a row with `deleted_at` set is a tombstone that nothing revives.

create table hotels (
    id              text primary key,            -- the Clerk organization id
    name            text not null,
    slug            text,
    image_url       text,
    public_metadata jsonb not null default '{}',
    created_at      timestamptz not null,
    updated_at      timestamptz not null,
    deleted_at      timestamptz,
    clerk_version   bigint not null
);

create table users (
    id            text primary key,              -- the Clerk user id
    email         text,                          -- the primary email address
    first_name    text,
    last_name     text,
    image_url     text,
    created_at    timestamptz not null,
    updated_at    timestamptz not null,
    deleted_at    timestamptz,
    -- 0 for a stub made from a membership's public_user_data: any user.* event outranks it.
    clerk_version bigint not null
);

create table memberships (
    hotel_id            text not null references hotels (id),
    user_id             text not null references users (id),
    clerk_membership_id text not null,
    role                text not null,
    created_at          timestamptz not null,
    updated_at          timestamptz not null,
    deleted_at          timestamptz,
    clerk_version       bigint not null,
    primary key (hotel_id, user_id)
);
create index memberships_user_id on memberships (user_id);

-- One row per received Svix delivery (deduplicated by svix-id).
create table jobs (
    id          bigserial primary key,
    event_id    text not null unique,            -- the svix-id header
    event_type  text not null,
    payload     jsonb not null,
    state       text not null default 'available'
                check (state in ('available', 'done', 'dead', 'skipped')),
    attempts    integer not null default 0,
    run_at      timestamptz not null default now(),
    -- The hotel id a membership job waits for: applying that hotel makes the job due at once.
    waiting_for text,
    last_error  text,
    errors      jsonb not null default '[]',     -- [{attempt, at, error}], one per failed attempt
    received_at timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    done_at     timestamptz,
    -- The hotel (for organization and membership events) or user the event is about: workers
    -- never hold two jobs of one entity at once.
    entity_key  text generated always as
                (coalesce(payload -> 'data' -> 'organization' ->> 'id', payload -> 'data' ->> 'id')) stored
);
create index jobs_due on jobs (run_at, id) where state = 'available';
create index jobs_waiting_for on jobs (waiting_for) where state = 'available' and waiting_for is not null;
create index jobs_state_received on jobs (state, received_at);
create index jobs_done_at on jobs (done_at) where state in ('done', 'skipped');

-- Wake the workers (LISTEN orgsync_jobs) whenever jobs are enqueued, whoever inserts them.
-- Postgres delivers the notification at commit, once per transaction. (A statement that stored
-- only skipped or duplicate deliveries wakes them for nothing; that is cheaper than checking.)
create function jobs_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('orgsync_jobs', '');
    return null;
end
$$;
create trigger jobs_notify after insert on jobs for each statement execute function jobs_notify();

-- Small key/value settings kept by the service itself (e.g. a generated webhook secret).
create table settings (
    key        text primary key,
    value      text not null,
    created_at timestamptz not null default now()
);

-- One row per resync run, for `orgsync status` and the metrics.
create table resync_runs (
    id          bigserial primary key,
    started_at  timestamptz not null default now(),
    finished_at timestamptz,
    outcome     text not null default 'running'
                check (outcome in ('running', 'succeeded', 'failed', 'refused')),
    dry_run     boolean not null default false,
    counts      jsonb not null default '{}',
    error       text
);
