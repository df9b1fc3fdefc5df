-- The W3C traceparent of the request that made a resource's current generation (create, change,
-- delete), when the API exports traces: the sentinel's announcement of that generation continues
-- the same trace. Null when tracing is off or the request was not traced.
alter table resources add column trace_parent text;
