//! The Functions queue output binding as a channel: when `DisconnectTimer/function.json` declares
//! an output binding of type `queue`, each sweep's alerts are returned in the timer invocation's
//! `Outputs.<name>`, one message per alert object (objects, never strings: the host splits a string
//! that looks like a JSON array and base64-decodes one that looks like base64). The host writes them
//! to the queue after the invocation succeeded; Logic Apps or any function can consume them.

use super::{Channel, Failure};
use crate::alerts::AlertBody;
use crate::store::BoxFuture;
use serde_json::Value;
use std::path::Path;
use std::sync::Mutex;

/// Collects the alert objects of one sweep for the timer's response.
pub struct QueueOutput {
    binding: String,
    pending: Mutex<Vec<Value>>,
}

impl QueueOutput {
    pub fn new(binding: &str) -> QueueOutput {
        QueueOutput {
            binding: binding.to_string(),
            pending: Mutex::new(Vec::new()),
        }
    }

    /// The output binding's name (the key in `Outputs`).
    pub fn binding(&self) -> &str {
        &self.binding
    }

    /// The messages collected since the last call.
    pub fn take(&self) -> Vec<Value> {
        std::mem::take(&mut *self.pending.lock().expect("not poisoned"))
    }

    /// Reads `function.json` and returns the name of its queue output binding, if it has one.
    pub fn declared_in(function_json: &Path) -> Option<String> {
        let text = std::fs::read_to_string(function_json).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v.get("bindings")?.as_array()?.iter().find_map(|b| {
            let is_queue = b.get("type")?.as_str()?.eq_ignore_ascii_case("queue");
            let is_out = b.get("direction")?.as_str()?.eq_ignore_ascii_case("out");
            (is_queue && is_out).then(|| b.get("name")?.as_str().map(str::to_string))?
        })
    }
}

/// The channel handle the notifier drains into the shared [`QueueOutput`].
pub struct QueueChannel(pub std::sync::Arc<QueueOutput>);

impl Channel for QueueChannel {
    fn name(&self) -> &'static str {
        "queue"
    }

    fn send<'a>(&'a self, alerts: &'a [AlertBody]) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let mut pending = self.0.pending.lock().expect("not poisoned");
            for a in alerts {
                pending
                    .push(serde_json::to_value(a).map_err(|e| Failure::Rejected(e.to_string()))?);
            }
            Ok(())
        })
    }
}
