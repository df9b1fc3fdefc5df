-- Aggregated conditions (Reconciled, LastKnownReconciled, <Adapter>Successful) computed by the API.
alter table resources
    add column conditions jsonb not null default '[]'::jsonb check (jsonb_typeof(conditions) = 'array');

-- The latest report of each adapter about each resource; removed with the resource.
create table adapter_statuses (
    resource_id         uuid        not null references resources (id) on delete cascade,
    adapter             text        not null,
    observed_generation integer     not null check (observed_generation >= 1),
    conditions          jsonb       not null check (jsonb_typeof(conditions) = 'array'),
    data                jsonb       not null default '{}'::jsonb,
    metadata            jsonb,
    created_time        timestamptz not null,
    last_report_time    timestamptz not null,
    primary key (resource_id, adapter)
);
