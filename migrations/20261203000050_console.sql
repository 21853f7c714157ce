-- The operator console (src/console/, `ORGSYNC_CONSOLE=on`): its sessions, and the indexes its
-- pages read through, so that every page is a few index lookups however large the tables are.

-- One row per signed-in browser. The cookie carries a random 32-byte session id; only its
-- SHA-256 is kept here, so a copy of this table (a backup, a read replica) lets nobody in. The
-- session points at the API token that signed in (by its non-secret key id; the token itself is
-- never kept): every request reads the token's name and access through it, so revoking the token
-- ends its sessions at once, as do `expires_at` and signing out.
create table console_sessions (
    id_hash      bytea primary key check (length(id_hash) = 32),
    token_key_id text not null references api_tokens (key_id) on delete cascade,
    created_at   timestamptz not null default now(),
    expires_at   timestamptz not null
);
create index console_sessions_expires on console_sessions (expires_at);

-- The jobs page filters by type and by entity (the hotel or user an event is about), newest
-- first, paged by keyset on (received_at, id). By state it pages through jobs_state_received.
create index jobs_type_received on jobs (event_type, received_at, id);
create index jobs_entity_received on jobs (entity_key, received_at, id) where entity_key is not null;

-- The access explorer finds users and hotels by the start of an email, a name or a slug
-- (case-insensitive; `like 'prefix%'` on text_pattern_ops works under any collation).
create index users_email_search on users (lower(email) text_pattern_ops);
create index users_name_search on users (lower(coalesce(first_name, '') || ' ' || coalesce(last_name, '')) text_pattern_ops);
create index users_last_name_search on users (lower(last_name) text_pattern_ops);
create index hotels_name_search on hotels (lower(name) text_pattern_ops);
create index hotels_slug_search on hotels (lower(slug) text_pattern_ops);

-- The resync page lists the latest runs.
create index resync_runs_started on resync_runs (started_at desc, id desc);
