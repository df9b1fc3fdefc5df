//! The domain: HyperFleet's rules as plain functions and types, no I/O — resource kinds and their
//! representation ([`model`]), request validation ([`validation`]), list parameters and the
//! `search` language ([`listing`], [`search`]), and the aggregation of adapter reports into
//! `Reconciled` and friends ([`aggregation`]). Rows and search parameters use sqlx types, but
//! nothing here runs a query. Both [`crate::http`] and [`crate::store`] use it;
//! it uses neither.

pub mod aggregation;
pub mod listing;
pub mod model;
pub mod search;
pub mod validation;
