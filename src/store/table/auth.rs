//! Authorising Table service requests: SharedKey signatures (the Table service's own string to
//! sign, which differs from Blob/Queue's) and managed identity bearer tokens, cached and refreshed
//! before they expire.
//!
//! Nothing here logs, and no error carries a key, a signature, a token or the identity header: the
//! `Authorization` header value is marked sensitive so even reqwest's `Debug` hides it.

use super::client::TableError;
use super::conn::{Credential, ManagedIdentity, IDENTITY_API_VERSION};
use crate::settings::Secret;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::HeaderValue;
use reqwest::Url;
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A cached token is replaced once less than this much of its life is left, so a request never
/// goes out with a token that expires in flight (Entra ID tokens live 1–24 h).
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// When the token endpoint fails, a cached token with at least this much life left is still used.
const STILL_USABLE: Duration = Duration::from_secs(30);

/// The Table service's SharedKey string to sign:
/// `VERB\nContent-MD5\nContent-Type\nDate\nCanonicalizedResource` (no canonicalised headers,
/// unlike Blob and Queue). `date` is the `x-ms-date` value when that header is sent.
pub fn string_to_sign(
    verb: &str,
    content_md5: &str,
    content_type: &str,
    date: &str,
    canonicalized_resource: &str,
) -> String {
    format!("{verb}\n{content_md5}\n{content_type}\n{date}\n{canonicalized_resource}")
}

/// `/{account}{encoded URL path}`, plus `?comp=…` when the query has a `comp` parameter (the only
/// query parameter the Table flavour signs). The path is taken exactly as it is sent, still
/// percent-encoded; a path-style emulator URL therefore names the account twice
/// (`/devstoreaccount1/devstoreaccount1/mytable`).
pub fn canonicalized_resource(account: &str, url: &Url) -> String {
    let mut s = format!("/{account}{}", url.path());
    if let Some(comp) = url
        .query_pairs()
        .find(|(k, _)| k.eq_ignore_ascii_case("comp"))
        .map(|(_, v)| v.into_owned())
    {
        s.push_str("?comp=");
        s.push_str(&comp);
    }
    s
}

/// Base64 of HMAC-SHA256(`key`, `string_to_sign`): the signature part of
/// `Authorization: SharedKey {account}:{signature}`.
pub fn sign(key: &[u8], string_to_sign: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// An HTTP date in the RFC 1123 form `x-ms-date` requires: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn rfc1123(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[usize::from(t.weekday().number_days_from_monday())],
        t.day(),
        MONTHS[usize::from(u8::from(t.month()) - 1)],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// How the client authorises each request; built once from a [`Credential`].
pub(crate) enum Authorizer {
    SharedKey {
        account: String,
        key: Secret<Vec<u8>>,
    },
    Bearer(TokenSource),
}

impl Authorizer {
    pub(crate) fn new(credential: &Credential, http: reqwest::Client) -> Authorizer {
        match credential {
            Credential::SharedKey { account, key } => Authorizer::SharedKey {
                account: account.clone(),
                key: key.clone(),
            },
            Credential::ManagedIdentity(mi) => {
                Authorizer::Bearer(TokenSource::new(mi.clone(), http))
            }
        }
    }

    /// The `Authorization` header for a request (marked sensitive). `date` must be the request's
    /// `x-ms-date` and `content_type` its `Content-Type` ("" when there is no body).
    pub(crate) async fn header(
        &self,
        verb: &str,
        content_type: &str,
        date: &str,
        url: &Url,
    ) -> Result<HeaderValue, TableError> {
        let value = match self {
            Authorizer::SharedKey { account, key } => {
                let sts = string_to_sign(
                    verb,
                    "",
                    content_type,
                    date,
                    &canonicalized_resource(account, url),
                );
                format!("SharedKey {account}:{}", sign(key.expose(), &sts))
            }
            Authorizer::Bearer(source) => format!("Bearer {}", source.token().await?.expose()),
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| {
            TableError::Invalid("the Authorization header could not be formed".into())
        })?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// After a 401 the token may have been revoked: the next request fetches a new one. Returns
    /// whether there was a token to drop (SharedKey has nothing to refresh).
    pub(crate) async fn invalidate(&self) -> bool {
        match self {
            Authorizer::SharedKey { .. } => false,
            Authorizer::Bearer(source) => {
                source.invalidate().await;
                true
            }
        }
    }
}

/// A token and when it stops being valid.
struct Token {
    value: Secret<String>,
    expires_at: SystemTime,
}

/// Managed identity tokens from the App Service / Functions local endpoint, cached.
///
/// The cache sits behind an async mutex held across the fetch: concurrent callers that find the
/// token stale wait for the one refresh in flight and then share its result, so a burst of
/// requests costs one token request, not one each.
pub struct TokenSource {
    identity: ManagedIdentity,
    http: reqwest::Client,
    cached: tokio::sync::Mutex<Option<Token>>,
}

impl TokenSource {
    pub fn new(identity: ManagedIdentity, http: reqwest::Client) -> TokenSource {
        TokenSource {
            identity,
            http,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A token with more than [`REFRESH_BEFORE_EXPIRY`] left, fetching one if needed. If the fetch
    /// fails while the cached token is still usable for a little while, that one is returned.
    pub async fn token(&self) -> Result<Secret<String>, TableError> {
        let mut cached = self.cached.lock().await;
        let now = SystemTime::now();
        if let Some(t) = cached.as_ref() {
            if t.expires_at > now + REFRESH_BEFORE_EXPIRY {
                return Ok(t.value.clone());
            }
        }
        match self.fetch().await {
            Ok(t) => {
                let v = t.value.clone();
                *cached = Some(t);
                Ok(v)
            }
            Err(e) => match cached.as_ref() {
                Some(t) if t.expires_at > now + STILL_USABLE => Ok(t.value.clone()),
                _ => Err(e),
            },
        }
    }

    /// Forgets the cached token.
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    /// `GET {IDENTITY_ENDPOINT}?resource=…&api-version=2019-08-01[&client_id=…]` with
    /// `X-IDENTITY-HEADER`; the answer has `access_token` and `expires_on` (epoch seconds, as a
    /// string in the documented example).
    async fn fetch(&self) -> Result<Token, TableError> {
        let mut url = Url::parse(&self.identity.endpoint).map_err(|_| {
            TableError::Invalid("the managed identity endpoint is not a valid URL".into())
        })?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("resource", &self.identity.resource);
            q.append_pair("api-version", IDENTITY_API_VERSION);
            if let Some(id) = &self.identity.client_id {
                q.append_pair("client_id", id);
            }
        }
        let mut header = HeaderValue::from_str(self.identity.header.expose()).map_err(|_| {
            TableError::Invalid("IDENTITY_HEADER holds characters a header cannot carry".into())
        })?;
        header.set_sensitive(true);
        let resp = self
            .http
            .get(url)
            .header("X-IDENTITY-HEADER", header)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| {
                TableError::Transient(format!(
                    "managed identity token request failed: {}",
                    e.without_url()
                ))
            })?;
        let status = resp.status().as_u16();
        // A token is a few KiB: an endless answer must not be buffered until the timeout.
        let body = crate::answer::prefix(resp, crate::answer::PREFIX)
            .await
            .map_err(|e| {
                TableError::Transient(format!(
                    "managed identity token response could not be read: {}",
                    e.without_url()
                ))
            })?;
        if status != 200 {
            // The endpoint's error bodies carry a message but never a token; keep a short line.
            let detail = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    ["message", "error_description", "error"]
                        .iter()
                        .find_map(|k| v.get(*k).and_then(|m| m.as_str()).map(str::to_string))
                })
                .map(|m| first_line(&m, 200))
                .unwrap_or_default();
            let message = format!("the managed identity endpoint answered {status}: {detail}");
            return Err(if status >= 500 || status == 429 || status == 408 {
                TableError::Transient(message)
            } else {
                TableError::Rejected {
                    status,
                    code: "ManagedIdentityTokenRequestFailed".into(),
                    message,
                }
            });
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            access_token: String,
            expires_on: Option<serde_json::Value>,
            expires_in: Option<serde_json::Value>,
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|_| {
            TableError::Transient("the managed identity endpoint's answer is not a token".into())
        })?;
        let seconds = |v: &serde_json::Value| match v {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        let expires_at = answer
            .expires_on
            .as_ref()
            .and_then(seconds)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .or_else(|| {
                answer
                    .expires_in
                    .as_ref()
                    .and_then(seconds)
                    .map(|s| SystemTime::now() + Duration::from_secs(s))
            })
            .ok_or_else(|| {
                TableError::Transient(
                    "the managed identity endpoint's answer has no usable expires_on".into(),
                )
            })?;
        if answer.access_token.is_empty() {
            return Err(TableError::Transient(
                "the managed identity endpoint returned an empty token".into(),
            ));
        }
        Ok(Token {
            value: Secret::new(answer.access_token),
            expires_at,
        })
    }
}

/// The first line of `s`, at most `max` characters: service messages put request ids and, for
/// authentication failures, the string to sign on later lines.
pub(crate) fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default().trim();
    match line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}
