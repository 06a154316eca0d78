//! connmon's integration tests: one test binary (`cargo test --test it`), one module per concern.
//! Wire-level tests start the real `connmon` binary the way the Functions host does.

mod support;

mod citations;
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
mod suite;
mod table_client;

mod alert_webhook;
mod channels;
mod clock;
mod crash;
mod dashboard;
mod dead_letters;
mod delivery;
mod faults;
mod host;
mod http_edge;
mod multi_instance;
mod poison;
mod readme;
mod replay;
mod restart;
mod standalone;
mod status_api;
mod store_reset;
