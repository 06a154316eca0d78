//! connmon's integration tests: one test binary (`cargo test --test it`), one module per concern.
//! Wire-level tests start the real `connmon` binary the way the Functions host does.

mod support;

mod core;
mod decode;
mod layout;
mod settings;
mod store;

mod alert_webhook;
mod host;
mod restart;
mod standalone;
