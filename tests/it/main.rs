//! connmon's integration tests: one test binary (`cargo test --test it`), one module per concern.
//! Wire-level tests start the real `connmon` binary the way the Functions host does.

mod support;

mod conformance;
mod core;
mod decode;
mod fuzz;
mod grouping;
mod hostile;
mod layout;
mod model;
mod settings;
mod status_core;
mod store;
mod table_client;

mod alert_webhook;
mod channels;
mod crash;
mod dashboard;
mod delivery;
mod faults;
mod host;
mod multi_instance;
mod replay;
mod restart;
mod standalone;
mod status_api;
