//! The API's integration tests, one binary (linked once): each module a feature, every test on a
//! fresh, migrated database of the local PostgreSQL through the production wiring
//! ([`hyperfleet_api::Application::build`], see `support`). `outage` stops PostgreSQL; it takes the
//! local infrastructure alone while the others share it ([`hyperfleet_tests::take_infra_alone`]).

mod auth;
mod bounds;
mod feed;
mod http;
mod lifecycle;
mod listing;
mod openapi;
mod outage;
mod server;
mod support;
