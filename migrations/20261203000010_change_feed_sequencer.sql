-- The change feed without a lock on the writers' commit path: a post-commit sequencer.
--
-- Before: every writing transaction drew its change ids at commit under a per-schema advisory
-- lock held until the commit was visible, and notified; so all writers committed one at a time.
-- Now:
--
-- * Writers insert their changes into `pending_changes`, in the statement that made them (one
--   statement-level trigger per table and event, reading the statement's transition tables:
--   set-based, no lock, no NOTIFY). `seq` is drawn from a plain sequence: insert order, not
--   commit order, and never shown to readers.
-- * The sequencer (src/changes/sequencer.rs: every `orgsync serve` ticks it; whoever holds the
--   per-schema advisory lock runs the tick, the others skip) moves, in one short transaction
--   and one statement, the committed pending rows into `changes`, numbering them `id` =
--   last id + 1, + 2, … in `seq` order, then notifies `orgsync_changes` once. The lock is taken
--   before the statement's snapshot, and released after the commit is visible, so each tick
--   sees every earlier tick: the ids are contiguous, and any reader that sees id N sees every
--   id below N. Readers keep `select … from changes where id > $cursor order by id`.
-- * Per-entity order: two writers of one row serialise on its row lock, and the trigger draws
--   `seq` before its transaction commits, so the later writer's change has the larger `seq`
--   and, moved in the same tick or a later one, the larger id.
-- * A sequencer that dies mid-tick rolls back: nothing moved, nothing numbered. Two sequencers
--   cannot run a tick at once (the lock), and `changes.id` is the primary key besides.
--
-- `changes` keeps its columns and primary key, so existing readers' SQL is unchanged, and the
-- sequencer's positions continue after the largest id already in the feed: a stored cursor sees
-- no gap and no repeat across this migration.
--
-- The sequencer's scan floor (`changes_sequencer.floor_seq`): every pending row with a smaller
-- or equal `seq` has been moved (or rolled back), so a tick reads `seq > floor_seq` and never
-- walks the dead index entries of moved rows (which a long read-only transaction, e.g.
-- pg_dump, keeps from being vacuumed). A tick proposes the last `seq` drawn before its moving
-- statement, with a transaction id assigned after that (its own): every writer that drew such
-- a `seq` held a smaller transaction id. A later tick whose snapshot's xmin has reached that id
-- knows all of them have ended, and after moving what it sees, raises the floor. This needs
-- each writer to hold a transaction id before it draws a `seq` (the trigger functions make sure
-- of it). (Not the snapshot's xmax: that is only the last completed id + 1, and a running
-- transaction's id may be above it.)

-- ADDING A TABLE TO THE FEED (e.g. helper rbac's role sets, in a later migration), one statement:
--
--     select add_to_change_feed('role_sets', entity => 'role_set', key_column => 'key',
--                               mirrored => array['key', 'name', 'description', 'created_at']);
--
-- (`hotel_column` / `user_column` name the columns filling `hotel_id` / `user_id`, when the
-- entity has them.) It creates the table's trigger function `feed_<table>()` and its two
-- triggers (`<table>_feed_insert`, `<table>_feed_update`), registers the entity in
-- `change_feed_tables` and widens the entity check of `changes` and `pending_changes`; calling
-- it again for the same table replaces all of that (to change the mirrored columns). The table
-- needs a primary key its updates never change, `deleted_at timestamptz` (the tombstone) and
-- `clerk_version bigint`; `last_job_id bigint` is used when present. An insert reports
-- `created` (`deleted` for a row inserted as a tombstone); an update reports `deleted` when the
-- row becomes a tombstone, `created` when it comes back, else `updated`, and only when one of
-- the `mirrored` columns (or `deleted_at`) changed and the row was not and stays not a
-- tombstone. Then add the entity to `crate::changes::ENTITIES` for `orgsync changes --entity`.

-- Insert order of the pending changes. cache 1: values are handed out in the order drawn (the
-- per-entity order and the scan floor rely on it).
create sequence pending_changes_seq cache 1;

create table pending_changes (
    seq           bigint primary key default nextval('pending_changes_seq'),
    at            timestamptz not null default clock_timestamp(), -- the end of the writing statement
    -- The entities of change_feed_tables (add_to_change_feed keeps the list).
    entity        text not null constraint pending_changes_entity_check check (entity <> ''),
    entity_id     text not null,
    hotel_id      text,
    user_id       text,
    op            text not null check (op in ('created', 'updated', 'deleted')),
    clerk_version bigint not null,
    source        text,
    job_id        bigint
);
alter sequence pending_changes_seq owned by pending_changes.seq;

-- The sequencer's state: one row.
create table changes_sequencer (
    one_row        boolean primary key default true check (one_row),
    last_id        bigint not null,              -- the largest id handed out
    floor_seq      bigint not null default 0,    -- every pending row with seq <= it is gone
    candidate_seq  bigint,                       -- the next floor, once
    candidate_xid  xid8,                         -- every writer that drew up to it has a smaller xid
    sequenced_at   timestamptz                   -- the last tick that moved something
);

-- Which table feeds which entity (written by add_to_change_feed).
create table change_feed_tables (
    entity     text primary key,
    table_name text not null unique
);

-- The old writers' triggers and their function go; no writer may commit in between (the old
-- triggers would draw ids the positions below might repeat).
-- (A block, so that a script applying the migrations without a transaction can run it too.)
do $$ begin
    lock table hotels, users, memberships, roles, permissions, invitations in access exclusive mode;
    lock table changes in share row exclusive mode;
end $$;
drop trigger hotels_changes on hotels;
drop trigger hotels_changes_update on hotels;
drop trigger users_changes on users;
drop trigger users_changes_update on users;
drop trigger memberships_changes on memberships;
drop trigger memberships_changes_update on memberships;
drop trigger roles_changes on roles;
drop trigger roles_changes_update on roles;
drop trigger permissions_changes on permissions;
drop trigger permissions_changes_update on permissions;
drop trigger invitations_changes on invitations;
drop trigger invitations_changes_update on invitations;
drop function record_change();

-- Positions continue after the largest id in the feed (or, when retention pruned it all, after
-- the last id the old sequence handed out): no stored cursor can be beyond it.
insert into changes_sequencer (last_id)
select coalesce((select max(id) from changes),
                (select case when is_called then last_value else 0 end from changes_id_seq));
drop sequence changes_id_seq;

create function add_to_change_feed(
    tbl          regclass,
    entity       text,
    key_column   text,
    hotel_column text default null,
    user_column  text default null,
    mirrored     text[] default '{}'
) returns void language plpgsql
set search_path from current as $generator$
declare
    tname       text := (select c.relname from pg_class c where c.oid = tbl);
    has_job     boolean;
    pk          text[];
    columns     text[] := array(select distinct c from unnest(array['deleted_at'] || mirrored) c order by 1);
    entities    text[];
    missing     text;
    fields      text;
    joined      text;
    effective   text;
    drops       text;
begin
    if entity !~ '^[a-z][a-z_]*$' then
        raise exception 'entity % must be lowercase letters and _', entity;
    end if;
    select c into missing
    from unnest(array[key_column, hotel_column, user_column, 'clerk_version'] || columns) c
    where c is not null
      and not exists (select 1 from pg_attribute a
                      where a.attrelid = tbl and a.attname = c and a.attnum > 0 and not a.attisdropped)
    limit 1;
    if missing is not null then
        raise exception 'table % has no column %', tbl, missing;
    end if;
    has_job := exists (select 1 from pg_attribute a
                       where a.attrelid = tbl and a.attname = 'last_job_id' and not a.attisdropped);
    pk := array(select a.attname::text
                from pg_index i
                join lateral unnest(i.indkey::int2[]) with ordinality k(attnum, n) on true
                join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                where i.indrelid = tbl and i.indisprimary
                order by k.n);
    if cardinality(pk) = 0 then
        raise exception 'table % needs a primary key (it pairs the old and new rows of an update)', tbl;
    end if;

    -- The columns every change row takes from the new row `n`.
    fields := format('%L, n.%I, %s, %s', entity, key_column,
                     coalesce('n.' || quote_ident(hotel_column), 'null'),
                     coalesce('n.' || quote_ident(user_column), 'null'));
    joined := (select string_agg(format('o.%1$I = n.%1$I', c), ' and ') from unnest(pk) c);
    effective := format('(%s) is distinct from (%s)',
                        (select string_agg('o.' || quote_ident(c), ', ') from unnest(columns) c),
                        (select string_agg('n.' || quote_ident(c), ', ') from unnest(columns) c));
    -- Row comparison needs two columns or more.
    if cardinality(columns) = 1 then
        effective := format('o.%1$I is distinct from n.%1$I', columns[1]);
    end if;

    execute format($function$
        create or replace function %I() returns trigger language plpgsql
        set search_path from current as $body$
        declare
            feed_source text := nullif(current_setting('orgsync.source', true), '');
        begin
            -- A transaction id before any seq is drawn (the sequencer's scan floor relies on it;
            -- a writer has one already, this only makes sure).
            perform pg_current_xact_id();
            if tg_op = 'INSERT' then
                insert into pending_changes (entity, entity_id, hotel_id, user_id, op, clerk_version, source, job_id)
                select %s, case when n.deleted_at is null then 'created' else 'deleted' end,
                       n.clerk_version, feed_source, %s
                from new_rows n;
            else
                insert into pending_changes (entity, entity_id, hotel_id, user_id, op, clerk_version, source, job_id)
                select %s,
                       case when o.deleted_at is null and n.deleted_at is not null then 'deleted'
                            when o.deleted_at is not null and n.deleted_at is null then 'created'
                            else 'updated' end,
                       n.clerk_version, feed_source, %s
                from old_rows o join new_rows n on %s
                where (o.deleted_at is null or n.deleted_at is null) and %s;
            end if;
            return null;
        end
        $body$
        $function$,
        'feed_' || tname,
        fields, case when has_job then $$case when feed_source = 'webhook' then n.last_job_id end$$ else 'null' end,
        fields, case when has_job then $$case when feed_source = 'webhook' then n.last_job_id end$$ else 'null' end,
        joined, effective);

    -- Called again for the same table: its triggers are replaced.
    for drops in select format('drop trigger %I on %s', t.tgname, tbl) from pg_trigger t
                 where t.tgrelid = tbl and t.tgname in (tname || '_feed_insert', tname || '_feed_update') loop
        execute drops;
    end loop;
    execute format('create trigger %I after insert on %s referencing new table as new_rows
                    for each statement execute function %I()',
                   tname || '_feed_insert', tbl, 'feed_' || tname);
    execute format('create trigger %I after update on %s referencing old table as old_rows new table as new_rows
                    for each statement execute function %I()',
                   tname || '_feed_update', tbl, 'feed_' || tname);

    insert into change_feed_tables as t (entity, table_name) values (entity, tname)
    on conflict on constraint change_feed_tables_pkey do update set table_name = excluded.table_name;
    entities := array(select t.entity from change_feed_tables t order by t.entity);
    -- `changes` can be large: its new check is not validated against the rows it already has
    -- (they were all checked by the one it replaces).
    execute format('alter table changes drop constraint if exists changes_entity_check,
                    add constraint changes_entity_check check (entity = any (%L::text[])) not valid', entities);
    execute format('alter table pending_changes drop constraint if exists pending_changes_entity_check,
                    add constraint pending_changes_entity_check check (entity = any (%L::text[]))', entities);
end
$generator$;

-- Only effective changes, as before: a change of a mirrored column (not clerk_version,
-- updated_at or last_job_id alone), and a tombstone that stays a tombstone is not reported.
-- A role reports every newer version (its `updated_at` moves when its permission set changes).
select add_to_change_feed('hotels', 'hotel', 'id', hotel_column => 'id',
    mirrored => array['name', 'slug', 'image_url', 'public_metadata', 'created_at']);
select add_to_change_feed('users', 'user', 'id', user_column => 'id',
    mirrored => array['email', 'first_name', 'last_name', 'image_url', 'created_at', 'banned', 'locked',
                      'username', 'external_id', 'public_metadata']);
select add_to_change_feed('memberships', 'membership', 'clerk_membership_id', 'hotel_id', 'user_id',
    mirrored => array['clerk_membership_id', 'role', 'created_at', 'role_name', 'permissions']);
select add_to_change_feed('roles', 'role', 'id',
    mirrored => array['key', 'name', 'description', 'created_at', 'updated_at']);
select add_to_change_feed('permissions', 'permission', 'id',
    mirrored => array['key', 'name', 'description', 'type', 'created_at']);
select add_to_change_feed('invitations', 'invitation', 'id', 'hotel_id', 'user_id',
    mirrored => array['hotel_id', 'email_address', 'role', 'role_name', 'status', 'user_id', 'expires_at',
                      'created_at']);
