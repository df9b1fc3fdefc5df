-- Every HyperFleet resource (clusters, and later nodepools as children of clusters) lives in one table:
-- the routes differ by kind, the storage and its invariants do not.
create table resources (
    id            uuid        primary key,                 -- UUIDv7, time-ordered
    kind          text        not null,                    -- 'Cluster', 'NodePool'
    name          text        not null,
    owner_id      uuid        references resources (id) on delete cascade,
    spec          jsonb       not null default '{}'::jsonb check (jsonb_typeof(spec) = 'object'),
    labels        jsonb       not null default '{}'::jsonb check (jsonb_typeof(labels) = 'object'),
    generation    integer     not null default 1 check (generation >= 1),
    created_time  timestamptz not null default now(),
    updated_time  timestamptz not null default now(),
    created_by    text        not null,
    updated_by    text        not null,
    deleted_time  timestamptz,
    deleted_by    text
);

-- A name is unique per kind (top level) or per kind and owner (children) among live resources;
-- a deleted resource's name can be reused.
create unique index resources_top_level_name_key on resources (kind, name)
    where owner_id is null and deleted_time is null;
create unique index resources_child_name_key on resources (kind, owner_id, name)
    where owner_id is not null and deleted_time is null;

-- The default list order.
create index resources_kind_created_idx on resources (kind, created_time desc, id desc);
create index resources_owner_idx on resources (owner_id) where owner_id is not null;
