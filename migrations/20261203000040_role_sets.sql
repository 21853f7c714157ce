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

-- The change feed covers role sets (entity `role_set`, entity_id the role set id: the key can
-- change). A role set reports every newer version: its `updated_at` moves when its roles change,
-- which its own columns alone would not show. A hotel also reports a change of its role set key.
select add_to_change_feed('role_sets', 'role_set', 'id',
    mirrored => array['key', 'name', 'description', 'type', 'default_role_key', 'creator_role_key',
                      'created_at', 'updated_at']);
select add_to_change_feed('hotels', 'hotel', 'id', hotel_column => 'id',
    mirrored => array['name', 'slug', 'image_url', 'public_metadata', 'created_at', 'role_set_key']);
