//! Helpers for HyperFleet's end-to-end tests: find the local environment started by
//! `tests/env/run`, give each test its own database, exchange and queue, and run the three real
//! service binaries as child processes (killed when the test ends, logs kept under
//! `target/e2e/`). Tests poll with deadlines; nothing here sleeps for synchronisation.
#![forbid(unsafe_code)]

mod fixtures;
pub mod node;
pub mod otlp;
mod proxy;
mod stack;
mod tap;

pub use fixtures::*;
pub use proxy::KubeProxy;
pub use stack::*;
pub use tap::Tap;
