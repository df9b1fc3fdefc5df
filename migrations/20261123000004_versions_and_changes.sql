-- Every change to a resource gets the next number of one sequence: the resource's `version`
-- (its ETag) and the position of the change in the change feed (`resource_version` of a watch).
--
-- Writers take a transaction-level advisory lock before drawing a number, so numbers become
-- visible in order: once change N is committed, every change below N is committed or rolled
-- back. A watcher that has seen N therefore never misses a lower one. NOTIFY is delivered at
-- commit, so a change that rolls back is never announced.
create sequence resource_versions;

alter table resources add column version bigint;
update resources set version = nextval('resource_versions');
alter table resources alter column version set not null;

-- One row per resource per transaction: a write that touches a row several times (a PATCH and
-- the recomputed conditions) is one change, as of its last state.
create table resource_changes (
    seq         bigint      primary key,
    change_type text        not null check (change_type in ('ADDED', 'MODIFIED', 'DELETED')),
    resource_id uuid        not null,
    tx          bigint      not null default txid_current(),
    -- The row as it was after the change (before it, for DELETED).
    snapshot    jsonb       not null,
    changed_at  timestamptz not null default now()
);
create index resource_changes_changed_at_idx on resource_changes (changed_at);
create index resource_changes_resource_idx on resource_changes (resource_id, tx);

-- Changes up to this number have been pruned; resuming from below it is impossible.
create table resource_changes_horizon (
    singleton     boolean primary key default true check (singleton),
    pruned_through bigint not null
);
insert into resource_changes_horizon (pruned_through) values (0);

create function hyperfleet_version() returns trigger language plpgsql as $$
begin
    perform pg_advisory_xact_lock(7306195426); -- 'hyperfleet-versions'
    if tg_op = 'DELETE' then
        return old;
    end if;
    new.version := nextval('resource_versions');
    return new;
end $$;

create function hyperfleet_record_change() returns trigger language plpgsql as $$
declare
    n bigint;
    earlier text;
    rid uuid := case when tg_op = 'DELETE' then old.id else new.id end;
begin
    -- An earlier change of this resource in this transaction is folded into this one.
    delete from resource_changes where resource_id = rid and tx = txid_current() returning change_type into earlier;
    if tg_op = 'DELETE' then
        if earlier = 'ADDED' then
            return null; -- created and removed in one transaction: nobody saw it
        end if;
        n := nextval('resource_versions');
        insert into resource_changes (seq, change_type, resource_id, snapshot)
            values (n, 'DELETED', rid, jsonb_set(to_jsonb(old), '{version}', to_jsonb(n)));
    else
        n := new.version;
        insert into resource_changes (seq, change_type, resource_id, snapshot)
            values (n, case when tg_op = 'INSERT' or earlier = 'ADDED' then 'ADDED' else 'MODIFIED' end, rid,
                    to_jsonb(new));
    end if;
    perform pg_notify('hyperfleet_changes', n::text);
    return null;
end $$;

create trigger resources_version_insert before insert on resources
    for each row execute function hyperfleet_version();
create trigger resources_version_update before update on resources
    for each row when (old.* is distinct from new.*) execute function hyperfleet_version();
create trigger resources_version_delete before delete on resources
    for each row execute function hyperfleet_version();
create trigger resources_change_insert after insert on resources
    for each row execute function hyperfleet_record_change();
create trigger resources_change_update after update on resources
    for each row when (old.* is distinct from new.*) execute function hyperfleet_record_change();
create trigger resources_change_delete after delete on resources
    for each row execute function hyperfleet_record_change();
