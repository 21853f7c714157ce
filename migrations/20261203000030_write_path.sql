-- The write path's Idempotency-Key store (POST /v1/hotels): the first answer to a key is kept and
-- replayed to every repeat of it, for at least 24 hours (pruned with the job retention, never
-- sooner than that). Keys are scoped by the API token's name, so two apps cannot collide.
--
-- state: 'running' while a request holds the key (until `locked_until`: a request that died
-- leaves it claimable after that), 'done' once its answer is stored (status + body), 'retry'
-- when it ended without a final answer (Clerk unreachable, the mirror write failed): the next
-- repeat runs it again, looking the organization up by `slug` before creating.
create table api_idempotency (
    token_name   text not null,
    key          text not null,
    -- SHA-256 of the request body: a key reused for another request is refused.
    fingerprint  text not null,
    -- The slug this request creates the organization with (generated when the caller gave none),
    -- so every repeat looks for and creates the same one.
    slug         text not null,
    state        text not null check (state in ('running', 'done', 'retry')),
    locked_until timestamptz,
    status       smallint,
    body         jsonb,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    primary key (token_name, key)
);
create index api_idempotency_created on api_idempotency (created_at);
