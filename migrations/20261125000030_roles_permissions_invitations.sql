-- The rest of Clerk's organization model: roles, permissions, the permission set of each role,
-- invitations, and the user status an app must honour at once (banned, locked). Same rules as
-- the other mirrored tables: `clerk_version` is the Clerk version a row was written from (the
-- object's `updated_at`, or the event time for a delete), only newer writes win, and a row with
-- `deleted_at` set is a tombstone. Extend, never rename.

create table roles (
    id            text primary key,              -- the Clerk role id (role_...)
    key           text not null,                 -- e.g. org:admin, what memberships.role holds
    name          text not null,
    description   text,
    created_at    timestamptz not null,
    updated_at    timestamptz not null,
    deleted_at    timestamptz,
    clerk_version bigint not null,
    last_job_id   bigint
);
-- Clerk keeps role keys unique; a key is free again once its role is deleted.
create unique index roles_live_key on roles (key) where deleted_at is null;

create table permissions (
    id            text primary key,              -- the Clerk permission id (perm_...)
    key           text not null,                 -- e.g. org:bookings:read
    name          text not null,
    description   text,
    type          text,                          -- system | custom | … as Clerk sends it
    created_at    timestamptz not null,
    updated_at    timestamptz not null,
    deleted_at    timestamptz,
    clerk_version bigint not null,
    last_job_id   bigint
);
create index permissions_key on permissions (key);

-- The permission set of each role, replaced as a whole by a newer version of the role.
create table role_permissions (
    role_id       text not null references roles (id),
    permission_id text not null references permissions (id),
    primary key (role_id, permission_id)
);
create index role_permissions_permission on role_permissions (permission_id);

-- Invitations to a hotel. The invitation `url` is never stored: it carries the acceptance token.
-- `deleted_at` is the tombstone (the hotel was deleted, or Clerk no longer has the invitation):
-- final, like every other tombstone.
create table invitations (
    id            text primary key,              -- the Clerk invitation id (orginv_...)
    hotel_id      text not null references hotels (id),
    email_address text not null,
    role          text not null,
    role_name     text,
    status        text not null,                 -- pending | accepted | revoked | … as Clerk sends it
    user_id       text,                          -- the user who accepted it, when Clerk says
    expires_at    timestamptz,
    created_at    timestamptz,                   -- absent from some events (revoked)
    updated_at    timestamptz not null,
    deleted_at    timestamptz,
    clerk_version bigint not null,
    last_job_id   bigint
);
create index invitations_hotel on invitations (hotel_id);

alter table memberships
    add column role_name   text,
    add column permissions text[] not null default '{}';

alter table users
    add column banned          boolean not null default false,
    add column locked          boolean not null default false,
    add column username        text,
    add column external_id     text,
    add column public_metadata jsonb not null default '{}';

-- The app's access check: one row per permission key a live member of a live hotel holds.
-- Through the role's current permission set when a live role has the membership's role key;
-- otherwise (the role not yet known) the membership's own `permissions` array stands in. A
-- deleted permission grants nothing on either path. Banned or locked users hold none.
create view member_permissions as
select m.hotel_id, m.user_id, m.role, p.key as permission
from memberships m
join hotels h on h.id = m.hotel_id and h.deleted_at is null
join users u on u.id = m.user_id and u.deleted_at is null and not u.banned and not u.locked
join roles r on r.key = m.role and r.deleted_at is null
join role_permissions rp on rp.role_id = r.id
join permissions p on p.id = rp.permission_id and p.deleted_at is null
where m.deleted_at is null
union all
select m.hotel_id, m.user_id, m.role, k.permission
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

-- Jobs inserted without an entity_key (not by the receiver): invitations are about their hotel.
create or replace function jobs_entity_key() returns trigger language plpgsql as $$
begin
    begin
        new.entity_key := coalesce(new.payload -> 'data' -> 'organization' ->> 'id',
                                   new.payload -> 'data' ->> 'organization_id',
                                   new.payload -> 'data' ->> 'id');
    exception when others then
        new.entity_key := null;
    end;
    return new;
end
$$;

-- The change feed covers the new tables. A role reports every newer version (its `updated_at`
-- moves when its permission set is edited, which the role's columns alone would not show).
alter table changes drop constraint changes_entity_check;
alter table changes add constraint changes_entity_check
    check (entity in ('hotel', 'user', 'membership', 'role', 'permission', 'invitation'));

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
        elsif tg_argv[0] in ('role', 'permission') then
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

-- Users and memberships report changes of their new columns too.
drop trigger users_changes_update on users;
create constraint trigger users_changes_update after update on users
    deferrable initially deferred for each row
    when ((old.deleted_at is null or new.deleted_at is null)
          and (old.deleted_at, old.email, old.first_name, old.last_name, old.image_url, old.created_at,
               old.banned, old.locked, old.username, old.external_id, old.public_metadata)
              is distinct from
              (new.deleted_at, new.email, new.first_name, new.last_name, new.image_url, new.created_at,
               new.banned, new.locked, new.username, new.external_id, new.public_metadata))
    execute function record_change('user');

drop trigger memberships_changes_update on memberships;
create constraint trigger memberships_changes_update after update on memberships
    deferrable initially deferred for each row
    when ((old.deleted_at is null or new.deleted_at is null)
          and (old.deleted_at, old.clerk_membership_id, old.role, old.created_at, old.role_name, old.permissions)
              is distinct from
              (new.deleted_at, new.clerk_membership_id, new.role, new.created_at, new.role_name, new.permissions))
    execute function record_change('membership');

create constraint trigger roles_changes after insert on roles
    deferrable initially deferred for each row execute function record_change('role');
create constraint trigger roles_changes_update after update on roles
    deferrable initially deferred for each row
    when ((old.deleted_at is null or new.deleted_at is null)
          and (old.deleted_at, old.key, old.name, old.description, old.created_at, old.updated_at)
              is distinct from
              (new.deleted_at, new.key, new.name, new.description, new.created_at, new.updated_at))
    execute function record_change('role');

create constraint trigger permissions_changes after insert on permissions
    deferrable initially deferred for each row execute function record_change('permission');
create constraint trigger permissions_changes_update after update on permissions
    deferrable initially deferred for each row
    when ((old.deleted_at is null or new.deleted_at is null)
          and (old.deleted_at, old.key, old.name, old.description, old.type, old.created_at)
              is distinct from
              (new.deleted_at, new.key, new.name, new.description, new.type, new.created_at))
    execute function record_change('permission');

create constraint trigger invitations_changes after insert on invitations
    deferrable initially deferred for each row execute function record_change('invitation');
create constraint trigger invitations_changes_update after update on invitations
    deferrable initially deferred for each row
    when ((old.deleted_at is null or new.deleted_at is null)
          and (old.hotel_id, old.email_address, old.role, old.role_name, old.status, old.user_id,
               old.expires_at, old.created_at, old.deleted_at)
              is distinct from
              (new.hotel_id, new.email_address, new.role, new.role_name, new.status, new.user_id,
               new.expires_at, new.created_at, new.deleted_at))
    execute function record_change('invitation');
