-- API tokens: who may call the `/v1` API and log in to the console. Only a SHA-256 of each token
-- is kept; the token itself is printed once by `orgsync tokens create` and never stored.
--
-- A token reads `osk_<key_id>_<secret>`: `key_id` (12 hex digits, not secret) finds the row, the
-- hash of the whole token is then compared in constant time. Revoking keeps the row (for the
-- record) and frees the name for a new token.
create table api_tokens (
    id           bigint generated always as identity primary key,
    name         text not null check (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    key_id       text not null unique check (key_id ~ '^[0-9a-f]{12}$'),
    hash         bytea not null check (length(hash) = 32),
    read_only    boolean not null,
    created_at   timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
create unique index api_tokens_live_name on api_tokens (name) where revoked_at is null;
