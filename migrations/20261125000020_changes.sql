-- The change feed: one row per effective change to a mirrored row (hotels, users, memberships),
-- written by triggers in the transaction that made the change, so every writer is covered.
--
-- Ordering (the outbox trap): a plain sequence drawn at insert would let a reader of
-- `id > cursor` pass an id whose transaction commits a moment later. Here the rows are written
-- by DEFERRED constraint triggers, which run at commit; the first one of a transaction takes a
-- transaction-level advisory lock (per schema) that is held until the commit has become
-- visible, and only then are ids drawn. So ids are drawn in commit order, and when any reader
-- sees id N, every change with a smaller id is already visible to it: the visible ids are always
-- a prefix (with gaps where a transaction rolled back). `select … where id > $cursor order by
-- id` is safe as it stands. The lock is held only from the start of the commit to its end (the
-- change rows and the WAL flush), never while a transaction does its work.

create sequence changes_id_seq cache 1; -- cache 1: ids must be handed out in the order drawn

create table changes (
    id            bigint primary key,                  -- increasing in commit order
    at            timestamptz not null default clock_timestamp(), -- when it was committed
    entity        text not null check (entity in ('hotel', 'user', 'membership')),
    -- The hotel id, the user id, or the Clerk membership id (orgmem_...).
    entity_id     text not null,
    -- Set for hotels and memberships / users and memberships: "every change about hotel X".
    hotel_id      text,
    user_id       text,
    op            text not null check (op in ('created', 'updated', 'deleted')),
    clerk_version bigint not null,                     -- the row's clerk_version after the change
    source        text,                                -- webhook | resync | self_heal
    job_id        bigint                               -- the job of a webhook change
);
alter sequence changes_id_seq owned by changes.id;
create index changes_at on changes (at);
create index changes_hotel on changes (hotel_id, id) where hotel_id is not null;
create index changes_user on changes (user_id, id) where user_id is not null;

-- Runs at commit, once per changed row (see the triggers below). `search_path` is pinned to the
-- schema the migration ran in, so the trigger writes this schema's feed whoever writes the row.
create function record_change() returns trigger language plpgsql
set search_path from current as $$
declare
    new_id   bigint;
    op       text;
    key      text;
    hotel    text;
    member   text;
    source   text := nullif(current_setting('orgsync.source', true), '');
    first_id text := current_setting('orgsync.changes_first_id', true);
begin
    if first_id is null or first_id = '' then
        -- First change of this commit: wait for the commits ahead to finish, then draw ids.
        perform pg_advisory_xact_lock(1869768547, hashtext(current_schema())); -- class "orgc"
    end if;
    if tg_op = 'INSERT' then
        op := case when new.deleted_at is null then 'created' else 'deleted' end;
    elsif old.deleted_at is null and new.deleted_at is not null then
        op := 'deleted';
    elsif old.deleted_at is not null and new.deleted_at is null then
        op := 'created';    -- a membership revived by a new Clerk membership (invited again)
    else
        op := 'updated';
    end if;
    -- Each table's columns are read in its own branch (plpgsql resolves NEW's fields when a
    -- statement first runs).
    if tg_argv[0] = 'hotel' then
        key := new.id; hotel := new.id;
    elsif tg_argv[0] = 'user' then
        key := new.id; member := new.id;
    else
        key := new.clerk_membership_id; hotel := new.hotel_id; member := new.user_id;
    end if;
    new_id := nextval('changes_id_seq');
    insert into changes (id, entity, entity_id, hotel_id, user_id, op, clerk_version, source, job_id)
    values (
        new_id,
        tg_argv[0], key, hotel, member, op,
        new.clerk_version,
        source,
        case when source = 'webhook' then new.last_job_id end
    );
    if first_id is null or first_id = '' then
        perform set_config('orgsync.changes_first_id', new_id::text, true);
        -- A wake-up for readers, delivered at commit. Channels are database-wide: the payload
        -- names the schema, and a reader must treat it as a hint only and read the table.
        perform pg_notify('orgsync_changes',
                          json_build_object('schema', current_schema(), 'id', new_id)::text);
    end if;
    return null;
end
$$;

-- Only effective changes: the WHEN conditions compare the mirrored columns (not clerk_version,
-- updated_at or last_job_id alone), and a tombstone that stays a tombstone is not reported.
-- WHEN is evaluated at the write; the trigger itself runs at commit.
create constraint trigger hotels_changes after insert on hotels
    deferrable initially deferred for each row execute function record_change('hotel');
create constraint trigger hotels_changes_update after update on hotels
    deferrable initially deferred for each row
    when ((old.deleted_at is null or new.deleted_at is null)
          and (old.deleted_at, old.name, old.slug, old.image_url, old.public_metadata, old.created_at)
              is distinct from
              (new.deleted_at, new.name, new.slug, new.image_url, new.public_metadata, new.created_at))
    execute function record_change('hotel');

create constraint trigger users_changes after insert on users
    deferrable initially deferred for each row execute function record_change('user');
create constraint trigger users_changes_update after update on users
    deferrable initially deferred for each row
    when ((old.deleted_at is null or new.deleted_at is null)
          and (old.deleted_at, old.email, old.first_name, old.last_name, old.image_url, old.created_at)
              is distinct from
              (new.deleted_at, new.email, new.first_name, new.last_name, new.image_url, new.created_at))
    execute function record_change('user');

create constraint trigger memberships_changes after insert on memberships
    deferrable initially deferred for each row execute function record_change('membership');
create constraint trigger memberships_changes_update after update on memberships
    deferrable initially deferred for each row
    when ((old.deleted_at is null or new.deleted_at is null)
          and (old.deleted_at, old.clerk_membership_id, old.role, old.created_at)
              is distinct from
              (new.deleted_at, new.clerk_membership_id, new.role, new.created_at))
    execute function record_change('membership');
