-- The required adapters each kind's conditions were last aggregated with. The API compares its
-- configured set with this at start-up: when they differ (an adapter was added to or removed from
-- required_adapters), it re-aggregates every resource of the kind — a new required adapter makes
-- resources un-Reconciled until it has reported — and then records the new set.
create table aggregated_with (
    kind              text   primary key check (kind in ('Cluster', 'NodePool')),
    required_adapters text[] not null
);
