//! The row keys that name an identity in the Table store: each id escaped so that every
//! character is allowed in a key, and fitted to the service's key size so that every identity
//! IoT Hub accepts has one.
//!
//! An identity's keys are `i|{hub}|{device}|{module}` and `d|{due, 15 digits}|{hub}|{device}|{module}`
//! (the longest). Each part is its id escaped by [`key_part`], exactly as in the first layout, so
//! rows already stored are found again without a migration. Escaping can triple an id (a device id
//! of 128 `%` is 384 characters), and Table Storage refuses a key over [`MAX_KEY_LEN`]; so a part
//! whose escaped form would not leave room for the parts after it is written as `~` and 32 hex
//! digits of the SHA-256 of the id instead. `~` is always escaped in a plain part, so the two forms
//! never meet. The full ids are kept as properties of the identity entity, which is what every
//! read returns.
//!
//! Each part depends only on the parts before it: the hub part on the hub, the device part on hub
//! and device. So a device's modules share its key prefix `i|{hub}|{device}|` (a deletion finds
//! them with one range query) and a hub's identities share `i|{hub}|` (the status API pages one
//! hub). For a hub name IoT Hub allows (at most 50 letters, digits and hyphens) the hub and
//! device parts are always plain, and the module part is hashed exactly when the old layout's key
//! would have been too long: an identity that had a key before has the same key now.

use crate::model::{Identity, Timestamp};
use sha2::{Digest, Sha256};

/// The longest key Table Storage takes: 1 KiB, counted in UTF-16 (the storage emulator counts
/// 512 characters). Escaped keys are ASCII, so characters, bytes and UTF-16 units agree.
pub const MAX_KEY_LEN: usize = 512;
/// `d|{due:015}|`: what comes before the identity in its longest key.
const DUE_PREFIX_LEN: usize = 2 + 15 + 1;
/// `~` and 32 hex digits.
const HASHED_LEN: usize = 33;

/// Escapes one id for use inside a key: keeps the characters IoT Hub ids are made of (except `%`
/// and `'`) and `%XX`-escapes everything else, including the separator `|` and the characters
/// Table Storage forbids in keys (`/ \ # ?`, control characters). `'` is escaped too: Azurite
/// misparses a batch whose row key contains `',` (the service does not), and it costs nothing.
pub fn key_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-:.+_*!(),=@;$".contains(&b);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `id` as one part of a key that already has `used` characters before it and needs `reserve`
/// after it: escaped when that fits, else hashed.
fn fitted(used: usize, reserve: usize, id: &str) -> String {
    let plain = key_part(id);
    if used + plain.len() + reserve <= MAX_KEY_LEN {
        return plain;
    }
    let digest = Sha256::digest(id.as_bytes());
    let mut out = String::with_capacity(HASHED_LEN);
    out.push('~');
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The hub's part of its identities' keys; room is left for a hashed device and module after it.
pub fn hub_part(hub: &str) -> String {
    fitted(DUE_PREFIX_LEN, 2 * (1 + HASHED_LEN), hub)
}

/// `{hub}|{device}`: the part of the keys a device shares with its modules (room is left for a
/// hashed module after it).
pub fn device_prefix(hub: &str, device: &str) -> String {
    let hub = hub_part(hub);
    let device = fitted(DUE_PREFIX_LEN + hub.len() + 1, 1 + HASHED_LEN, device);
    format!("{hub}|{device}")
}

/// `{hub}|{device}|{module}`, each part escaped or hashed: the identity's name in its keys.
fn identity_suffix(id: &Identity) -> String {
    let prefix = device_prefix(id.hub(), id.device());
    let module = fitted(
        DUE_PREFIX_LEN + prefix.len() + 1,
        0,
        id.module().unwrap_or(""),
    );
    format!("{prefix}|{module}")
}

/// The identity entity's row key.
pub fn identity_key(id: &Identity) -> String {
    format!("i|{}", identity_suffix(id))
}

/// The sweep index entity's row key: the identity is due at `start`.
pub fn due_key(start: Timestamp, id: &Identity) -> String {
    format!(
        "d|{:015}|{}",
        start.unix_millis().max(0),
        identity_suffix(id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout before keys were fitted: every part escaped, whatever the length.
    fn old_due_key(id: &Identity) -> String {
        format!(
            "d|{:015}|{}|{}|{}",
            0,
            key_part(id.hub()),
            key_part(id.device()),
            key_part(id.module().unwrap_or(""))
        )
    }

    fn forbidden(key: &str) -> bool {
        key.chars()
            .any(|c| matches!(c, '/' | '\\' | '#' | '?') || c.is_control())
    }

    #[test]
    fn every_key_that_fitted_before_is_unchanged() {
        let hub50 = "h".repeat(50);
        let cases = [
            Identity::new("hub", "sensor-42", None),
            Identity::new("hub", "gw", Some("$edgeHub")),
            Identity::new(
                "my-hub",
                "a-b:c.d+e%f_g#h*i?j!k(l)m,n=o@p;q$r's",
                Some("%2F"),
            ),
            Identity::new(&hub50, &"%".repeat(128), None),
            Identity::new(&hub50, &"%".repeat(128), Some(&"x".repeat(40))),
            Identity::new(&hub50, &"x".repeat(128), Some(&"%".repeat(104))),
        ];
        for id in cases {
            let old = old_due_key(&id);
            assert!(old.len() <= MAX_KEY_LEN, "{id}: a case that fitted before");
            assert_eq!(due_key(Timestamp::from_unix_millis(0), &id), old, "{id}");
            assert_eq!(identity_key(&id), format!("i|{}", &old[DUE_PREFIX_LEN..]));
        }
    }

    #[test]
    fn the_longest_ids_iot_hub_accepts_fit_and_keep_their_device_prefix() {
        let long = "%".repeat(128);
        let hub = "h".repeat(50);
        let device = Identity::new(&hub, &long, None);
        let module = Identity::new(&hub, &long, Some(&long));
        let late = Timestamp::from_unix_millis(999_999_999_999_999);
        for id in [&device, &module] {
            let key = due_key(late, id);
            assert!(key.len() <= MAX_KEY_LEN, "{id}: {} characters", key.len());
            assert!(!forbidden(&key), "{key}");
        }
        // Only the module part is hashed; the device part is the one its device has.
        let prefix = format!("i|{}|", device_prefix(&hub, &long));
        assert!(identity_key(&device).starts_with(&prefix));
        assert!(identity_key(&module).starts_with(&prefix));
        assert_eq!(
            identity_key(&device),
            format!("i|{hub}|{}|", "%25".repeat(128))
        );
        let module_part = identity_key(&module)[prefix.len()..].to_string();
        assert_eq!(module_part.len(), HASHED_LEN, "{module_part}");
        assert!(module_part.starts_with('~'));
        // Another module of the same length hashes elsewhere.
        let other = Identity::new(&hub, &long, Some(&"#".repeat(128)));
        assert_ne!(identity_key(&other), identity_key(&module));
    }

    #[test]
    fn any_ids_at_all_fit() {
        // Beyond what decode accepts (control characters, non-ASCII, thousands of characters):
        // the key still fits and holds no forbidden character.
        let huge = "é\u{0}/".repeat(5000);
        let cases = [
            Identity::new(&huge, &huge, Some(&huge)),
            Identity::new("hub", &huge, Some("m")),
            Identity::new(&"%".repeat(128), &"%".repeat(128), Some(&"%".repeat(128))),
        ];
        for id in cases {
            let key = due_key(Timestamp::from_unix_millis(999_999_999_999_999), &id);
            assert!(key.len() <= MAX_KEY_LEN && !forbidden(&key), "{key}");
            let prefix = format!("i|{}|", device_prefix(id.hub(), id.device()));
            assert!(identity_key(&id).starts_with(&prefix));
            assert!(prefix.starts_with(&format!("i|{}|", hub_part(id.hub()))));
        }
    }
}
