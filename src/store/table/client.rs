//! A thin Azure Table Storage REST client: just the operations connmon's table store needs (point
//! reads, conditional writes, paged queries, entity group transactions), over reqwest, with typed
//! errors and bounded retries. There is no maintained Rust crate for the Table service, so this
//! speaks the documented REST protocol directly (JSON, OData 3.0, `x-ms-version` [`API_VERSION`]).
//!
//! Reads ask for `application/json;odata=minimalmetadata`, not `nometadata`: without metadata the
//! service leaves out each entity's `odata.etag` in query results and the `Edm.Int64` annotations,
//! so a queried entity could be neither conditionally updated nor written back with its types.
//!
//! Retries live here (throttling, 5xx, network errors), bounded by [`ClientOptions`]. A write whose
//! first attempt landed but whose answer was lost reports `Conflict`, `PreconditionFailed` or (a
//! delete) `NotFound` on the retry, which the caller already treats as "re-read and decide again":
//! every write is conditional. Errors never contain keys, signatures, tokens or URLs.

use super::auth::{self, first_line, Authorizer};
use super::conn::TableEndpoint;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, AUTHORIZATION};
use reqwest::{Method, Url};
use serde_json::{Map, Value};
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A service version both Azure and Azurite accept, and the one the current Azure SDKs for
/// Tables send; new enough for bearer (Entra ID) authorisation.
pub const API_VERSION: &str = "2019-02-02";
/// At most this many operations in one entity group transaction.
pub const MAX_BATCH_OPS: usize = 100;
/// The service returns at most this many entities per query page.
pub const MAX_PAGE: usize = 1000;
/// The documented limit of an entity group transaction's payload.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

const ACCEPT_JSON: &str = "application/json;odata=minimalmetadata";
const CONTENT_JSON: &str = "application/json";
const INT64: &str = "Edm.Int64";
const ANNOTATION: &str = "@odata.type";

/// Everything but RFC 3986's unreserved characters is percent-encoded in keys and query values, as
/// the Azure SDKs do (`Uri.EscapeDataString`), so `'`, `%`, `+`, `$`, `(`, `)`, … survive intact.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One table entity: its keys, the etag it was read or written at, and its other properties as
/// they travel in JSON (OData type annotations such as `"n@odata.type": "Edm.Int64"` included, so
/// an entity read and written back keeps its property types). Use the typed helpers
/// ([`Entity::set_i64`], [`Entity::get_i64`], …) rather than `props` directly.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Entity {
    pub partition_key: String,
    pub row_key: String,
    /// Set by reads; writes take their etag as a parameter instead.
    pub etag: Option<String>,
    /// Never contains `PartitionKey`, `RowKey`, `Timestamp` or `odata.*` control information.
    pub props: Map<String, Value>,
}

impl Entity {
    pub fn new(partition_key: &str, row_key: &str) -> Entity {
        Entity {
            partition_key: partition_key.to_string(),
            row_key: row_key.to_string(),
            etag: None,
            props: Map::new(),
        }
    }

    /// Sets a string property (`Edm.String`).
    pub fn set_str(&mut self, name: &str, value: &str) -> &mut Self {
        self.props.remove(&annotation(name));
        self.props
            .insert(name.to_string(), Value::String(value.to_string()));
        self
    }

    /// A string property; `None` when absent or of another type (an `Edm.Int64` is not a string
    /// even though JSON carries it as one).
    pub fn get_str(&self, name: &str) -> Option<&str> {
        match self.type_of(name) {
            None | Some("Edm.String") => self.props.get(name)?.as_str(),
            Some(_) => None,
        }
    }

    /// Sets a 64-bit integer property: JSON numbers lose precision past 2^53, so the service wants
    /// it as a string annotated `Edm.Int64`.
    pub fn set_i64(&mut self, name: &str, value: i64) -> &mut Self {
        self.props
            .insert(annotation(name), Value::String(INT64.to_string()));
        self.props
            .insert(name.to_string(), Value::String(value.to_string()));
        self
    }

    /// A 64-bit integer property, read back either as the annotated string the service returns or
    /// as a JSON number (an `Edm.Int32`). `None` when absent or not an integer.
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        match (self.props.get(name)?, self.type_of(name)) {
            (Value::String(s), None | Some(INT64)) => s.parse().ok(),
            (Value::Number(n), None | Some("Edm.Int32") | Some(INT64)) => n.as_i64(),
            _ => None,
        }
    }

    /// Sets a boolean property (`Edm.Boolean`).
    pub fn set_bool(&mut self, name: &str, value: bool) -> &mut Self {
        self.props.remove(&annotation(name));
        self.props.insert(name.to_string(), Value::Bool(value));
        self
    }

    /// A boolean property; `None` when absent or of another type.
    pub fn get_bool(&self, name: &str) -> Option<bool> {
        self.props.get(name)?.as_bool()
    }

    /// Removes a property and its type annotation (a replace then drops it from the stored entity).
    pub fn remove(&mut self, name: &str) -> &mut Self {
        self.props.remove(&annotation(name));
        self.props.remove(name);
        self
    }

    fn type_of(&self, name: &str) -> Option<&str> {
        self.props.get(&annotation(name)).and_then(Value::as_str)
    }

    /// The JSON body of an insert or replace.
    fn to_wire(&self) -> Map<String, Value> {
        let mut m: Map<String, Value> = self
            .props
            .iter()
            .filter(|(k, _)| !is_reserved(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.insert(
            "PartitionKey".into(),
            Value::String(self.partition_key.clone()),
        );
        m.insert("RowKey".into(), Value::String(self.row_key.clone()));
        m
    }

    /// An entity from a response body; `etag` is the `ETag` header when there is one.
    fn from_wire(mut m: Map<String, Value>, etag: Option<String>) -> Result<Entity, TableError> {
        let mut key = |name: &str| match m.remove(name) {
            Some(Value::String(s)) => Ok(s),
            _ => Err(TableError::Transient(format!(
                "the service returned an entity without a string {name}"
            ))),
        };
        let partition_key = key("PartitionKey")?;
        let row_key = key("RowKey")?;
        let etag = etag.or_else(|| {
            m.get("odata.etag")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        m.retain(|k, _| !is_reserved(k));
        Ok(Entity {
            partition_key,
            row_key,
            etag,
            props: m,
        })
    }
}

fn annotation(name: &str) -> String {
    format!("{name}{ANNOTATION}")
}

/// System properties and OData control information: set by the service, never written by us.
fn is_reserved(name: &str) -> bool {
    let base = name.strip_suffix(ANNOTATION).unwrap_or(name);
    name.starts_with("odata.") || matches!(base, "PartitionKey" | "RowKey" | "Timestamp")
}

/// Quotes a string for an OData `$filter`: `it's` → `'it''s'`. Never splice raw values into a
/// filter: a quote in a device id would end the literal.
pub fn odata_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// What went wrong with a Table service call. Messages never contain keys, signatures, tokens,
/// connection strings or URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// The entity does not exist (404 ResourceNotFound). A missing *table* is `Rejected` instead:
    /// that is a deployment problem, not a row that is absent.
    NotFound,
    /// 409: the entity already exists (EntityAlreadyExists), or another conflict such as a table
    /// being deleted.
    Conflict,
    /// 412: the entity changed since the etag the write was conditional on (or is gone).
    PreconditionFailed,
    /// 429 or 503 ServerBusy after the client's own retries; `retry_after` is the service's hint.
    Throttled { retry_after: Option<Duration> },
    /// Network failure, timeout, 5xx, or an unreadable answer, after the client's own retries.
    Transient(String),
    /// Operation `index` (0-based, in the order given to [`TableClient::batch`]) of an entity
    /// group transaction failed with `source`; none of the transaction's operations was applied.
    BatchFailed {
        index: usize,
        source: Box<TableError>,
    },
    /// Any other refusal (400 bad request, 401/403 authentication or authorisation, 404 table
    /// missing, …); `code` is the service's error code such as `InvalidInput`.
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// Refused before anything was sent: a key with a character the service forbids, an invalid
    /// table name, too many operations in a batch, …
    Invalid(String),
}

impl TableError {
    /// Worth trying again later (the client has already retried within its budget).
    pub fn is_transient(&self) -> bool {
        match self {
            TableError::Throttled { .. } | TableError::Transient(_) => true,
            TableError::BatchFailed { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::NotFound => f.write_str("table entity not found"),
            TableError::Conflict => {
                f.write_str("table conflict (409): the entity already exists or the table is busy")
            }
            TableError::PreconditionFailed => f.write_str(
                "table entity changed since it was read (412: the etag no longer matches)",
            ),
            TableError::Throttled {
                retry_after: Some(d),
            } => write!(
                f,
                "the Table service is throttling requests; it asks to retry after {}s",
                d.as_secs_f64()
            ),
            TableError::Throttled { retry_after: None } => {
                f.write_str("the Table service is throttling requests (429/503)")
            }
            TableError::Transient(m) => write!(f, "the Table service is unavailable: {m}"),
            TableError::BatchFailed { index, source } => write!(
                f,
                "operation {index} of an entity group transaction failed, none was applied: {source}"
            ),
            TableError::Rejected {
                status,
                code,
                message,
            } => write!(
                f,
                "the Table service refused the request ({status} {code}): {message}"
            ),
            TableError::Invalid(m) => write!(f, "invalid Table service request: {m}"),
        }
    }
}

impl std::error::Error for TableError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TableError::BatchFailed { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// One operation of an entity group transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOp {
    /// Insert; fails (`Conflict`) if the entity exists.
    Insert(Entity),
    /// Replace at `etag` (`If-Match`; `"*"` = whatever version exists, but it must exist).
    Replace { entity: Entity, etag: String },
    /// Merge the entity's properties into the stored one at `etag` (`If-Match`): the properties
    /// not named are kept.
    Merge { entity: Entity, etag: String },
    /// Insert or replace, unconditionally.
    Upsert(Entity),
    /// Delete at `etag` (`"*"` = any version, but it must exist).
    Delete { row_key: String, etag: String },
}

impl BatchOp {
    fn row_key(&self) -> &str {
        match self {
            BatchOp::Insert(e)
            | BatchOp::Upsert(e)
            | BatchOp::Replace { entity: e, .. }
            | BatchOp::Merge { entity: e, .. } => &e.row_key,
            BatchOp::Delete { row_key, .. } => row_key,
        }
    }
}

/// Where a query resumes: the service's opaque `x-ms-continuation-Next*` tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuation {
    pub next_partition_key: String,
    pub next_row_key: Option<String>,
}

/// Timeouts and the retry budget. The defaults suit a request path that must answer the Functions
/// host within seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Per HTTP request, connecting included.
    pub request_timeout: Duration,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// Back-off before the second attempt; doubles each time, with jitter (50–100 %).
    pub base_delay: Duration,
    /// Cap on one back-off (also on an honoured `Retry-After`).
    pub max_delay: Duration,
    /// No retry starts once this much time has passed since the call began (nor if its wait
    /// would end after it).
    pub retry_budget: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(10),
            max_attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
            retry_budget: Duration::from_secs(10),
        }
    }
}

/// A client for one table. Cheap to clone (an `Arc` inside) and `Send + Sync`; clones share the
/// connection pool and the token cache.
#[derive(Clone)]
pub struct TableClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The endpoint's base URL without a trailing slash.
    base: String,
    table: String,
    auth: Authorizer,
    options: ClientOptions,
}

impl fmt::Debug for TableClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableClient")
            .field("base", &self.inner.base)
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

/// A request to send (possibly several times: each attempt is dated and signed afresh).
struct Call {
    method: Method,
    url: Url,
    accept: Option<&'static str>,
    content_type: Option<String>,
    body: Option<Vec<u8>>,
    headers: Vec<(&'static str, String)>,
}

impl Call {
    fn new(method: Method, url: Url) -> Call {
        Call {
            method,
            url,
            accept: Some(ACCEPT_JSON),
            content_type: None,
            body: None,
            headers: Vec::new(),
        }
    }

    fn json(mut self, body: &Map<String, Value>) -> Call {
        self.content_type = Some(CONTENT_JSON.to_string());
        self.body = Some(serde_json::to_vec(body).expect("a JSON map serialises"));
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Call {
        self.headers.push((name, value.into()));
        self
    }
}

/// A response read whole.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    fn success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The service's error code and first message line (from `x-ms-error-code`, the JSON
    /// `odata.error` or an XML `<Error>` body).
    fn error_detail(&self) -> (String, String) {
        let (body_code, message) = error_body(&String::from_utf8_lossy(&self.body));
        let code = self
            .header("x-ms-error-code")
            .or(body_code)
            .unwrap_or_default();
        (code, message)
    }

    /// The typed error for a non-2xx answer.
    fn into_error(self) -> TableError {
        let (code, message) = self.error_detail();
        classify(self.status, code, message, retry_after(&self.headers))
    }

    fn etag(&self) -> Result<String, TableError> {
        self.header("etag").ok_or_else(|| {
            TableError::Transient("the service's answer to a write has no ETag".into())
        })
    }
}

/// Maps a status and error code to the typed error.
fn classify(
    status: u16,
    code: String,
    message: String,
    retry_after: Option<Duration>,
) -> TableError {
    // The error code decides where it is unambiguous: inside a batch the documentation shows a
    // failed operation as 400 whatever went wrong.
    match code.as_str() {
        "EntityAlreadyExists" => return TableError::Conflict,
        "UpdateConditionNotSatisfied" | "ConditionNotMet" => return TableError::PreconditionFailed,
        "ResourceNotFound" => return TableError::NotFound,
        _ => {}
    }
    match status {
        404 if code != "TableNotFound" => TableError::NotFound,
        409 => TableError::Conflict,
        412 => TableError::PreconditionFailed,
        429 | 503 => TableError::Throttled { retry_after },
        408 | 500 | 502 | 504 => {
            TableError::Transient(format!("the service answered {status} {code}"))
        }
        401 | 403 => TableError::Rejected {
            status,
            // The service's own message for a bad signature quotes the string it signed; the code
            // (AuthenticationFailed, AuthorizationPermissionMismatch, …) says what is wrong.
            message: "authentication or authorisation failed: check the account key, or the \
                      managed identity's role assignment (Storage Table Data Contributor)"
                .into(),
            code,
        },
        _ => TableError::Rejected {
            status,
            code,
            message,
        },
    }
}

/// Extracts code and message from an error body: JSON `{"odata.error":{"code":…,"message":
/// {"value":…}}}` or XML `<Error><Code>…</Code><Message>…</Message></Error>`.
fn error_body(text: &str) -> (Option<String>, String) {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        let e = &v["odata.error"];
        let code = e["code"].as_str().map(str::to_string);
        let message = e["message"]["value"]
            .as_str()
            .or_else(|| e["message"].as_str())
            .unwrap_or_default();
        return (code, first_line(message, 300));
    }
    if text.trim_start().starts_with('{') {
        // JSON that does not parse (the documentation's own sample lacks a closing quote): take
        // the fields by hand.
        let field = |name: &str| {
            let at = text.find(&format!("\"{name}\":\""))? + name.len() + 4;
            let rest = &text[at..];
            let end = rest.find(['"', '\\']).unwrap_or(rest.len());
            Some(rest[..end].to_string())
        };
        return (field("code"), field("value").unwrap_or_default());
    }
    let tag = |name: &str| {
        let lower = text.to_ascii_lowercase();
        let open = format!("<{name}");
        let start = lower.find(&open)?;
        let start = start + lower[start..].find('>')? + 1;
        let end = start + lower[start..].find(&format!("</{name}>"))?;
        Some(text[start..end].trim().to_string())
    };
    (
        tag("code"),
        tag("message")
            .map(|m| first_line(&m, 300))
            .unwrap_or_default(),
    )
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// A number in [0, 1) that differs per call, for jitter and boundaries (not for secrets).
fn random_fraction() -> f64 {
    let bits = RandomState::new().hash_one(Instant::now()) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

fn random_hex() -> String {
    let a = RandomState::new().hash_one(SystemTime::now());
    let b = RandomState::new().hash_one(Instant::now());
    format!("{a:016x}{b:016x}")
}

/// Rejects characters the service forbids in keys (`/ \ # ?` and control characters); they cannot
/// be addressed in a URL.
fn check_key(what: &str, key: &str) -> Result<(), TableError> {
    if let Some(c) = key
        .chars()
        .find(|c| matches!(c, '/' | '\\' | '#' | '?') || c.is_control())
    {
        return Err(TableError::Invalid(format!(
            "a {what} may not contain {c:?} (the Table service forbids / \\ # ? and control characters)"
        )));
    }
    Ok(())
}

/// Table names: a letter, then letters and digits, 3–63 in all; `Tables` is reserved.
fn check_table_name(name: &str) -> Result<(), TableError> {
    let ok = (3..=63).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name.bytes().all(|b| b.is_ascii_alphanumeric())
        && !name.eq_ignore_ascii_case("tables");
    if ok {
        Ok(())
    } else {
        Err(TableError::Invalid(format!(
            "{name:?} is not a valid table name (a letter, then letters and digits, 3 to 63 \
             characters, not `Tables`)"
        )))
    }
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

fn parse_url(s: &str) -> Result<Url, TableError> {
    Url::parse(s).map_err(|_| TableError::Invalid("the request URL could not be formed".into()))
}

/// A reqwest error as text: without its URL (it could carry a SAS) but with its causes, which say
/// what actually happened ("connection refused", "operation timed out").
fn network_error(what: &str, e: reqwest::Error) -> TableError {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if timeout {
        text.push_str(" (timed out)");
    }
    TableError::Transient(format!("{what}: {text}"))
}

impl TableClient {
    /// A client for `table` with the default [`ClientOptions`]. Sends nothing yet.
    pub fn new(endpoint: TableEndpoint, table: &str) -> Result<TableClient, TableError> {
        TableClient::with_options(endpoint, table, ClientOptions::default())
    }

    pub fn with_options(
        endpoint: TableEndpoint,
        table: &str,
        options: ClientOptions,
    ) -> Result<TableClient, TableError> {
        check_table_name(table)?;
        let base = endpoint.base_url.trim_end_matches('/').to_string();
        let url = Url::parse(&base)
            .map_err(|_| TableError::Invalid("the table endpoint is not an absolute URL".into()))?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
            return Err(TableError::Invalid(
                "the table endpoint must be an http(s) URL without a query".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.request_timeout.min(Duration::from_secs(5)))
            // The Table service never redirects; following one would resend the Authorization.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("connmon/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| network_error("the HTTP client could not be built", e))?;
        let auth = Authorizer::new(&endpoint.credential, http.clone());
        Ok(TableClient {
            inner: Arc::new(Inner {
                http,
                base,
                table: table.to_string(),
                auth,
                options,
            }),
        })
    }

    pub fn table_name(&self) -> &str {
        &self.inner.table
    }

    /// Creates the table; one that already exists (409 TableAlreadyExists) is fine.
    pub async fn create_table_if_missing(&self) -> Result<(), TableError> {
        let url = parse_url(&format!("{}/Tables", self.inner.base))?;
        let mut body = Map::new();
        body.insert("TableName".into(), Value::String(self.inner.table.clone()));
        let call = Call::new(Method::POST, url)
            .json(&body)
            .header("Prefer", "return-no-content");
        let answer = self.send(&call).await?;
        if answer.success() {
            return Ok(());
        }
        if answer.status == 409 && answer.error_detail().0 == "TableAlreadyExists" {
            return Ok(());
        }
        Err(answer.into_error())
    }

    /// The entity with these keys, `None` if there is none; its `etag` is set.
    pub async fn get(&self, pk: &str, rk: &str) -> Result<Option<Entity>, TableError> {
        let call = Call::new(Method::GET, self.entity_url(pk, rk)?);
        let answer = self.send(&call).await?;
        if answer.success() {
            let etag = answer.header("etag");
            let m = serde_json::from_slice::<Map<String, Value>>(&answer.body).map_err(|_| {
                TableError::Transient("the service's entity is not a JSON object".into())
            })?;
            return Entity::from_wire(m, etag).map(Some);
        }
        match answer.into_error() {
            TableError::NotFound => Ok(None),
            e => Err(e),
        }
    }

    /// Inserts `e` (its `etag` is ignored); `Conflict` if it exists. Returns the new etag.
    pub async fn insert(&self, e: &Entity) -> Result<String, TableError> {
        check_key("PartitionKey", &e.partition_key)?;
        check_key("RowKey", &e.row_key)?;
        let url = parse_url(&self.table_url())?;
        let call = Call::new(Method::POST, url)
            .json(&e.to_wire())
            .header("Prefer", "return-no-content");
        self.write(call).await
    }

    /// Replaces the stored entity if it is still at `etag` (`"*"`: any version, but it must
    /// exist). `PreconditionFailed` if it changed, `NotFound` if it is gone. Returns the new etag.
    pub async fn replace(&self, e: &Entity, etag: &str) -> Result<String, TableError> {
        let call = Call::new(Method::PUT, self.entity_url(&e.partition_key, &e.row_key)?)
            .json(&e.to_wire())
            .header("If-Match", etag);
        self.write(call).await
    }

    /// Inserts or replaces `e` unconditionally (PUT without `If-Match`). Returns the new etag.
    pub async fn upsert(&self, e: &Entity) -> Result<String, TableError> {
        let call = Call::new(Method::PUT, self.entity_url(&e.partition_key, &e.row_key)?)
            .json(&e.to_wire());
        self.write(call).await
    }

    /// Deletes the entity if it is still at `etag` (`"*"`: any version).
    pub async fn delete(&self, pk: &str, rk: &str, etag: &str) -> Result<(), TableError> {
        let call = Call::new(Method::DELETE, self.entity_url(pk, rk)?).header("If-Match", etag);
        let answer = self.send(&call).await?;
        if answer.success() {
            Ok(())
        } else {
            Err(answer.into_error())
        }
    }

    /// Entities matching `filter` (an OData `$filter` built with [`odata_string`]; empty = all),
    /// following the service's continuation tokens (`x-ms-continuation-NextPartitionKey` /
    /// `NextRowKey`) until `limit` entities are collected or there are no more. `select` limits
    /// the properties returned (the keys and etag always come back).
    pub async fn query(
        &self,
        filter: &str,
        select: Option<&[&str]>,
        limit: Option<usize>,
    ) -> Result<Vec<Entity>, TableError> {
        let mut out = Vec::new();
        let mut next: Option<Continuation> = None;
        loop {
            let remaining = limit.map(|l| l.saturating_sub(out.len()));
            if remaining == Some(0) {
                return Ok(out);
            }
            let (page, token) = self
                .query_page(filter, select, remaining, next.as_ref())
                .await?;
            out.extend(page.into_iter().take(remaining.unwrap_or(usize::MAX)));
            match token {
                None => return Ok(out),
                Some(t) if Some(&t) == next.as_ref() => {
                    return Err(TableError::Transient(
                        "the service repeated a continuation token".into(),
                    ))
                }
                Some(t) => next = Some(t),
            }
        }
    }

    /// One page of a query: asks for at most `top` entities (`$top`, capped at [`MAX_PAGE`]; the
    /// service may return fewer, even none, with a continuation), starting at `from`, plus the
    /// continuation to the next page if there is one. For callers that process a large result
    /// page by page; [`TableClient::query`] follows the pages itself.
    pub async fn query_page(
        &self,
        filter: &str,
        select: Option<&[&str]>,
        top: Option<usize>,
        from: Option<&Continuation>,
    ) -> Result<(Vec<Entity>, Option<Continuation>), TableError> {
        let mut q = Vec::new();
        if !filter.trim().is_empty() {
            q.push(format!("$filter={}", encode(filter)));
        }
        if let Some(select) = select {
            let mut cols = vec!["PartitionKey", "RowKey"];
            for c in select {
                if !cols.contains(c) {
                    cols.push(c);
                }
            }
            q.push(format!("$select={}", encode(&cols.join(","))));
        }
        let top = top.map(|t| t.min(MAX_PAGE));
        if let Some(t) = top {
            q.push(format!("$top={t}"));
        }
        if let Some(c) = from {
            q.push(format!(
                "NextPartitionKey={}",
                encode(&c.next_partition_key)
            ));
            if let Some(nrk) = &c.next_row_key {
                q.push(format!("NextRowKey={}", encode(nrk)));
            }
        }
        let mut url = format!("{}()", self.table_url());
        if !q.is_empty() {
            url.push('?');
            url.push_str(&q.join("&"));
        }
        let answer = self.send(&Call::new(Method::GET, parse_url(&url)?)).await?;
        if !answer.success() {
            return Err(answer.into_error());
        }
        #[derive(serde::Deserialize)]
        struct Page {
            value: Vec<Map<String, Value>>,
        }
        let page: Page = serde_json::from_slice(&answer.body).map_err(|_| {
            TableError::Transient("the service's query page is not {\"value\": [...]}".into())
        })?;
        let entities = page
            .value
            .into_iter()
            .map(|m| Entity::from_wire(m, None))
            .collect::<Result<Vec<_>, _>>()?;
        let next = answer
            .header("x-ms-continuation-NextPartitionKey")
            .map(|pk| Continuation {
                next_partition_key: pk,
                next_row_key: answer.header("x-ms-continuation-NextRowKey"),
            });
        Ok((entities, next))
    }

    /// An entity group transaction (`POST $batch`, one changeset): all `ops` in partition `pk`, at
    /// most [`MAX_BATCH_OPS`], each row at most once, applied atomically. Returns each operation's
    /// new etag in order (`None` for deletes). When an operation fails the service applies none and
    /// names it: the error is `BatchFailed { index, source }` with `source` the operation's own
    /// error (`Conflict`, `PreconditionFailed`, `NotFound`, …).
    pub async fn batch(
        &self,
        pk: &str,
        ops: Vec<BatchOp>,
    ) -> Result<Vec<Option<String>>, TableError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        if ops.len() > MAX_BATCH_OPS {
            return Err(TableError::Invalid(format!(
                "an entity group transaction holds at most {MAX_BATCH_OPS} operations, not {}",
                ops.len()
            )));
        }
        check_key("PartitionKey", pk)?;
        let mut seen = std::collections::HashSet::new();
        for (i, op) in ops.iter().enumerate() {
            if let BatchOp::Insert(e)
            | BatchOp::Upsert(e)
            | BatchOp::Replace { entity: e, .. }
            | BatchOp::Merge { entity: e, .. } = op
            {
                if e.partition_key != pk {
                    return Err(TableError::Invalid(format!(
                        "operation {i} of an entity group transaction is in another partition"
                    )));
                }
            }
            check_key("RowKey", op.row_key())?;
            if !seen.insert(op.row_key()) {
                return Err(TableError::Invalid(format!(
                    "operation {i} of an entity group transaction touches a row an earlier one \
                     does (a transaction may change each entity once)"
                )));
            }
        }

        let batch_boundary = format!("batch_{}", random_hex());
        let changeset = format!("changeset_{}", random_hex());
        let body = self.batch_body(pk, &ops, &batch_boundary, &changeset)?;
        if body.len() > MAX_BATCH_BYTES {
            return Err(TableError::Invalid(format!(
                "the entity group transaction is {} bytes; the service accepts at most 4 MiB",
                body.len()
            )));
        }
        let url = parse_url(&format!("{}/$batch", self.inner.base))?;
        let mut call = Call::new(Method::POST, url);
        call.accept = None;
        call.content_type = Some(format!("multipart/mixed; boundary={batch_boundary}"));
        call.body = Some(body.into_bytes());
        let answer = self.send(&call).await?;
        if !answer.success() {
            return Err(answer.into_error());
        }
        let content_type = answer.header("content-type").unwrap_or_default();
        let parts = parse_multipart(&content_type, &String::from_utf8_lossy(&answer.body));
        batch_outcome(&ops, parts)
    }

    fn batch_body(
        &self,
        pk: &str,
        ops: &[BatchOp],
        batch_boundary: &str,
        changeset: &str,
    ) -> Result<String, TableError> {
        use std::fmt::Write as _;
        let mut b = String::new();
        let _ = write!(
            b,
            "--{batch_boundary}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"
        );
        for (i, op) in ops.iter().enumerate() {
            let (method, url, if_match, entity) = match op {
                BatchOp::Insert(e) => ("POST", self.table_url(), None, Some(e)),
                BatchOp::Replace { entity, etag } => (
                    "PUT",
                    self.entity_url_string(pk, &entity.row_key),
                    Some(etag.as_str()),
                    Some(entity),
                ),
                BatchOp::Merge { entity, etag } => (
                    "MERGE",
                    self.entity_url_string(pk, &entity.row_key),
                    Some(etag.as_str()),
                    Some(entity),
                ),
                BatchOp::Upsert(e) => {
                    ("PUT", self.entity_url_string(pk, &e.row_key), None, Some(e))
                }
                BatchOp::Delete { row_key, etag } => (
                    "DELETE",
                    self.entity_url_string(pk, row_key),
                    Some(etag.as_str()),
                    None,
                ),
            };
            let _ = write!(
                b,
                "--{changeset}\r\nContent-Type: application/http\r\n\
                 Content-Transfer-Encoding: binary\r\n\r\n\
                 {method} {url} HTTP/1.1\r\nContent-ID: {}\r\nAccept: {ACCEPT_JSON}\r\n\
                 DataServiceVersion: 3.0;\r\n",
                i + 1
            );
            if let Some(etag) = if_match {
                if etag.contains(['\r', '\n']) {
                    return Err(TableError::Invalid(
                        "an etag may not contain a line break".into(),
                    ));
                }
                let _ = write!(b, "If-Match: {etag}\r\n");
            }
            match entity {
                Some(e) => {
                    if matches!(op, BatchOp::Insert(_)) {
                        b.push_str("Prefer: return-no-content\r\n");
                    }
                    // serde_json writes one line (newlines in strings are escaped), which the
                    // emulator's batch parser needs.
                    let json = serde_json::to_string(&e.to_wire()).expect("a JSON map serialises");
                    let _ = write!(b, "Content-Type: {CONTENT_JSON}\r\n\r\n{json}\r\n");
                }
                None => b.push_str("\r\n"),
            }
        }
        let _ = write!(b, "--{changeset}--\r\n--{batch_boundary}--\r\n");
        Ok(b)
    }

    /// `{base}/{table}`
    fn table_url(&self) -> String {
        format!("{}/{}", self.inner.base, self.inner.table)
    }

    /// `{base}/{table}(PartitionKey='…',RowKey='…')`, quotes doubled, then percent-encoded.
    fn entity_url_string(&self, pk: &str, rk: &str) -> String {
        format!(
            "{}(PartitionKey='{}',RowKey='{}')",
            self.table_url(),
            encode(&pk.replace('\'', "''")),
            encode(&rk.replace('\'', "''"))
        )
    }

    fn entity_url(&self, pk: &str, rk: &str) -> Result<Url, TableError> {
        check_key("PartitionKey", pk)?;
        check_key("RowKey", rk)?;
        parse_url(&self.entity_url_string(pk, rk))
    }

    /// Sends an insert/replace/upsert and returns the new etag.
    async fn write(&self, call: Call) -> Result<String, TableError> {
        let answer = self.send(&call).await?;
        if answer.success() {
            answer.etag()
        } else {
            Err(answer.into_error())
        }
    }

    /// Sends `call`, retrying throttling (429, 503), server errors (408, 500, 502, 504) and
    /// network failures with exponential back-off and jitter, within the attempt and time budget
    /// of [`ClientOptions`]. Any other answer, success or not, is returned for the caller to map.
    async fn send(&self, call: &Call) -> Result<Answer, TableError> {
        let o = &self.inner.options;
        let started = Instant::now();
        let mut attempt: u32 = 0;
        let mut renewed_token = false;
        loop {
            attempt += 1;
            let (error, hint) = match self.attempt(call).await {
                // A rejected bearer token may have been revoked early: fetch a new one, once.
                Ok(a)
                    if a.status == 401 && !renewed_token && self.inner.auth.invalidate().await =>
                {
                    renewed_token = true;
                    (a.into_error(), Some(Duration::ZERO))
                }
                Ok(a) if retryable_status(a.status) => {
                    let hint = retry_after(&a.headers);
                    (a.into_error(), hint)
                }
                Ok(a) => return Ok(a),
                Err(e @ TableError::Transient(_)) => (e, None),
                Err(e) => return Err(e),
            };
            if attempt >= o.max_attempts.max(1) {
                return Err(error);
            }
            let delay = match hint {
                Some(d) => d.min(o.max_delay),
                None => {
                    let exp = o
                        .base_delay
                        .saturating_mul(1u32 << (attempt - 1).min(16))
                        .min(o.max_delay);
                    exp.mul_f64(0.5 + 0.5 * random_fraction())
                }
            };
            // A Retry-After beyond the cap or the budget: give the caller the hint instead.
            if hint.is_some_and(|h| h > o.max_delay) || started.elapsed() + delay > o.retry_budget {
                return Err(error);
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt: dates, signs and sends the request, reads the whole answer.
    async fn attempt(&self, call: &Call) -> Result<Answer, TableError> {
        let date = auth::rfc1123(SystemTime::now());
        let content_type = call.content_type.as_deref().unwrap_or("");
        let authorization = self
            .inner
            .auth
            .header(call.method.as_str(), content_type, &date, &call.url)
            .await?;
        let mut rb = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone())
            .header("x-ms-date", &date)
            .header("x-ms-version", API_VERSION)
            .header("DataServiceVersion", "3.0;NetFx")
            .header("MaxDataServiceVersion", "3.0;NetFx")
            .header(AUTHORIZATION, authorization);
        if let Some(accept) = call.accept {
            rb = rb.header("Accept", accept);
        }
        if let Some(ct) = &call.content_type {
            rb = rb.header("Content-Type", ct);
        }
        for (k, v) in &call.headers {
            rb = rb.header(*k, v);
        }
        // DELETE and GET carry no body; POST/PUT always do (reqwest sets Content-Length).
        if let Some(body) = &call.body {
            rb = rb.body(body.clone());
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| network_error("the request failed", e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| network_error("the answer could not be read", e))?
            .to_vec();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// One `application/http` part of a batch response.
#[derive(Debug)]
struct Part {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Part {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The value of `boundary=` in a `Content-Type`, quotes removed.
fn boundary_of(s: &str) -> Option<String> {
    let at = s.to_ascii_lowercase().find("boundary=")? + "boundary=".len();
    let v: String = s[at..]
        .trim_start_matches('"')
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, ';' | '"'))
        .collect();
    (!v.is_empty()).then_some(v)
}

/// Splits a batch response into its `application/http` parts. The response nests the changeset's
/// parts inside the batch part; the changeset boundary is declared in the body.
fn parse_multipart(content_type: &str, text: &str) -> Vec<Part> {
    let outer = boundary_of(content_type);
    let inner = boundary_of(text);
    let delimiters: Vec<String> = [outer, inner]
        .into_iter()
        .flatten()
        .map(|b| format!("--{b}"))
        .collect();
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in text.lines() {
        let trimmed = line.trim_end();
        if delimiters
            .iter()
            .any(|d| trimmed == d || trimmed == format!("{d}--"))
        {
            sections.push(Vec::new());
        } else if let Some(last) = sections.last_mut() {
            last.push(line);
        }
    }
    sections
        .into_iter()
        .filter_map(|lines| {
            let start = lines.iter().position(|l| l.starts_with("HTTP/1."))?;
            let status = lines[start].split_whitespace().nth(1)?.parse().ok()?;
            let mut headers = Vec::new();
            let mut i = start + 1;
            while i < lines.len() && !lines[i].trim().is_empty() {
                if let Some((k, v)) = lines[i].split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
                i += 1;
            }
            let body = lines.get(i + 1..).unwrap_or_default().join("\n");
            Some(Part {
                status,
                headers,
                body: body.trim().to_string(),
            })
        })
        .collect()
}

/// Turns the parts of a batch response into etags, or the failing operation's error.
fn batch_outcome(ops: &[BatchOp], parts: Vec<Part>) -> Result<Vec<Option<String>>, TableError> {
    if let Some(failed) = parts.iter().find(|p| p.status >= 300) {
        let (code, message) = error_body(&failed.body);
        // The documented way to find the failing operation: its 0-based index starts the message
        // ("1:The specified resource does not exist."). The `Content-ID` of the failed part (our
        // 1-based numbering echoed back) is the fallback.
        let (prefix_index, message) = match message.split_once(':') {
            Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                (n.parse::<usize>().ok(), rest.to_string())
            }
            _ => (None, message),
        };
        let index = prefix_index
            .or_else(|| {
                failed
                    .header("Content-ID")
                    .and_then(|c| c.trim().parse::<usize>().ok())
                    .and_then(|c| c.checked_sub(1))
            })
            .or((ops.len() == 1).then_some(0))
            .filter(|i| *i < ops.len());
        let retry = failed
            .header("Retry-After")
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_secs);
        let source = classify(failed.status, code.unwrap_or_default(), message, retry);
        return Err(match index {
            Some(index) => TableError::BatchFailed {
                index,
                source: Box::new(source),
            },
            // A failure of the transaction as a whole (malformed, too large, …).
            None => source,
        });
    }
    if parts.len() != ops.len() {
        return Err(TableError::Transient(format!(
            "the batch answer has {} operation results for {} operations",
            parts.len(),
            ops.len()
        )));
    }
    let mut etags = vec![None; ops.len()];
    for (position, part) in parts.iter().enumerate() {
        let i = part
            .header("Content-ID")
            .and_then(|c| c.trim().parse::<usize>().ok())
            .and_then(|c| c.checked_sub(1))
            .filter(|i| *i < ops.len())
            .unwrap_or(position);
        if !matches!(ops[i], BatchOp::Delete { .. }) {
            etags[i] = Some(part.header("ETag").map(str::to_string).ok_or_else(|| {
                TableError::Transient(format!("the batch answer has no ETag for operation {i}"))
            })?);
        }
    }
    Ok(etags)
}
