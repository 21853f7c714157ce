-- Role sets: which organization roles a hotel may hand out. Each Clerk organization names one
-- (`role_set_key`), and Clerk refuses a membership role its organization's role set does not
-- list. Clerk sends no webhook for role sets: the resync, the self-heal of a hotel and
-- orgsync's write path bring them. Same rules as the other mirrored tables: `clerk_version` is
-- the Clerk version a row was written from (`updated_at`, or the time of its deletion), only
-- newer writes win, and `deleted_at` marks a final tombstone. Extend, never rename.

create table role_sets (
    id               text primary key,          -- the Clerk role set id
    key              text not null,             -- e.g. role_set:default, what hotels.role_set_key holds
    name             text not null,
    description      text,
    type             text,                      -- initial | custom, as Clerk sends it
    default_role_key text,                      -- the role new members get
    creator_role_key text,                      -- the role an organization's creator gets
    created_at       timestamptz not null,
    updated_at       timestamptz not null,
    deleted_at       timestamptz,
    clerk_version    bigint not null,
    last_job_id      bigint                     -- always null: no webhook writes role sets
);
-- Clerk keeps role set keys unique; a key is free again once its role set is deleted.
create unique index role_sets_live_key on role_sets (key) where deleted_at is null;

-- The roles of each role set as Clerk lists them (key as memberships hold it, and the role id),
-- replaced as a whole by a newer version of the role set.
create table role_set_roles (
    role_set_id text not null references role_sets (id),
    role_key    text not null,
    role_id     text not null,
    primary key (role_set_id, role_key)
);

-- Written by the hotel rules from the organization payload's `role_set_key` (null: the instance
-- has no role sets, or Clerk did not say).
alter table hotels add column role_set_key text;

-- The access check also says whether the member's role is one the hotel's role set lists:
-- true / false, or null when the hotel names no role set or its role set is not mirrored
-- (live). A role outside the set still grants what its permission set holds (Clerk keeps such
-- memberships, e.g. while a role set replacement migrates them), but Clerk would refuse to give
-- that role to anyone in this hotel now. One more lookup per row: the live-key index of
-- `role_sets`, then the primary key of `role_set_roles`.
create or replace view member_permissions as
select m.hotel_id, m.user_id, m.role, p.key as permission,
       (select exists (select 1 from role_set_roles x where x.role_set_id = rs.id and x.role_key = m.role)
        from role_sets rs where rs.key = h.role_set_key and rs.deleted_at is null) as role_in_role_set
from memberships m
join hotels h on h.id = m.hotel_id and h.deleted_at is null
join users u on u.id = m.user_id and u.deleted_at is null and not u.banned and not u.locked
join roles r on r.key = m.role and r.deleted_at is null
join role_permissions rp on rp.role_id = r.id
join permissions p on p.id = rp.permission_id and p.deleted_at is null
where m.deleted_at is null
union all
select m.hotel_id, m.user_id, m.role, k.permission,
       (select exists (select 1 from role_set_roles x where x.role_set_id = rs.id and x.role_key = m.role)
        from role_sets rs where rs.key = h.role_set_key and rs.deleted_at is null) as role_in_role_set
from memberships m
join hotels h on h.id = m.hotel_id and h.deleted_at is null
join users u on u.id = m.user_id and u.deleted_at is null and not u.banned and not u.locked
cross join lateral unnest(m.permissions) as k (permission)
where m.deleted_at is null
  and not exists (select 1 from roles r where r.key = m.role and r.deleted_at is null)
  and not exists (select 1 from permissions p
                  where p.key = k.permission and p.deleted_at is not null
                    and not exists (select 1 from permissions q
                                    where q.key = k.permission and q.deleted_at is null));

-- The change feed covers role sets (entity `role_set`; entity_id is the role set id). A role
-- set reports every newer version: its `updated_at` moves when its roles change, which its own
-- columns alone would not show. A hotel reports a change of its role set key.
alter table changes drop constraint changes_entity_check;
alter table changes add constraint changes_entity_check
    check (entity in ('hotel', 'user', 'membership', 'role', 'permission', 'invitation', 'role_set'));

-- (TEMPORARY until the feed's sequencer lands: the deferred-trigger writer, taught role sets.)
create or replace function record_change() returns trigger language plpgsql
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
    -- Each table's columns are read in its own branch (plpgsql resolves NEW's fields when a
    -- statement first runs). An invitation's revocation is a status; its tombstone (deleted_at)
    -- is final, so it is reported `deleted` once.
    if tg_argv[0] = 'invitation' then
        op := case when tg_op = 'INSERT' then 'created'
                   when old.deleted_at is null and new.deleted_at is not null then 'deleted'
                   else 'updated' end;
        key := new.id; hotel := new.hotel_id; member := new.user_id;
    else
        if tg_op = 'INSERT' then
            op := case when new.deleted_at is null then 'created' else 'deleted' end;
        elsif old.deleted_at is null and new.deleted_at is not null then
            op := 'deleted';
        elsif old.deleted_at is not null and new.deleted_at is null then
            op := 'created';    -- a membership revived by a new Clerk membership (invited again)
        else
            op := 'updated';
        end if;
        if tg_argv[0] = 'hotel' then
            key := new.id; hotel := new.id;
        elsif tg_argv[0] = 'user' then
            key := new.id; member := new.id;
        elsif tg_argv[0] in ('role', 'permission', 'role_set') then
            key := new.id;
        else
            key := new.clerk_membership_id; hotel := new.hotel_id; member := new.user_id;
        end if;
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
        perform pg_notify('orgsync_changes',
                          json_build_object('schema', current_schema(), 'id', new_id)::text);
    end if;
    return null;
end
$$;

create constraint trigger role_sets_changes after insert on role_sets
    deferrable initially deferred for each row execute function record_change('role_set');
create constraint trigger role_sets_changes_update after update on role_sets
    deferrable initially deferred for each row
    when ((old.deleted_at is null or new.deleted_at is null)
          and (old.deleted_at, old.key, old.name, old.description, old.type, old.default_role_key,
               old.creator_role_key, old.created_at, old.updated_at)
              is distinct from
              (new.deleted_at, new.key, new.name, new.description, new.type, new.default_role_key,
               new.creator_role_key, new.created_at, new.updated_at))
    execute function record_change('role_set');

drop trigger hotels_changes_update on hotels;
create constraint trigger hotels_changes_update after update on hotels
    deferrable initially deferred for each row
    when ((old.deleted_at is null or new.deleted_at is null)
          and (old.deleted_at, old.name, old.slug, old.image_url, old.public_metadata, old.created_at,
               old.role_set_key)
              is distinct from
              (new.deleted_at, new.name, new.slug, new.image_url, new.public_metadata, new.created_at,
               new.role_set_key))
    execute function record_change('hotel');
