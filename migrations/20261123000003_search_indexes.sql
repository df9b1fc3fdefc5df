-- Label selectors (`search=labels.k='v'`, the sentinel's sharding) compile to `labels @> {...}`,
-- which this index serves.
create index resources_labels_idx on resources using gin (labels jsonb_path_ops);
