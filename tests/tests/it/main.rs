//! End-to-end tests against the real components, one binary (linked once): the three service
//! binaries on loopback ([`hyperfleet_tests::Stack`]), the chart rendered by helm and installed as
//! pods on the local node, TLS, authentication and monitoring. The outage tests stop RabbitMQ or
//! PostgreSQL; each takes the local infrastructure alone while the others share it
//! ([`hyperfleet_tests::take_infra_alone`]).

mod acceptance;
mod adapter;
mod auth;
mod chart;
mod controller;
mod e2e;
mod monitoring;
mod outages;
mod pods;
mod sentinel;
mod tls;
mod tracing;
