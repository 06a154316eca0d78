//! Where the Table service is and how to authenticate to it, read once at start-up from the same
//! settings the Functions host uses for its own storage (`AzureWebJobsStorage`), so a Function App
//! needs no extra configuration: a connection string with an account key, the emulator shorthand
//! `UseDevelopmentStorage=true`, or an identity-based connection (`AzureWebJobsStorage__accountName`)
//! authenticated by the app's managed identity.
//!
//! Connection strings and keys are secrets: every error names the setting and what is wrong with it,
//! never its value, and `Debug` of every type here redacts them.

use crate::settings::{Secret, SettingsError};
use base64::Engine as _;
use std::net::IpAddr;

/// The emulator's well-known account (Azurite and the old Storage Emulator), published by
/// Microsoft; only ever valid against an emulator.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// The emulator's well-known key for [`DEV_ACCOUNT`] (public, not a secret).
pub const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The Table service port of the emulator.
pub const DEV_TABLE_PORT: u16 = 10002;
/// The Entra ID resource (audience) for Azure Storage tokens.
pub const STORAGE_RESOURCE: &str = "https://storage.azure.com/";
/// The App Service / Functions managed identity protocol version whose response carries
/// `expires_on` as seconds since the epoch and whose secret header is `X-IDENTITY-HEADER`.
pub const IDENTITY_API_VERSION: &str = "2019-08-01";

/// A dedicated connection for connmon's table, used before `AzureWebJobsStorage` (so connmon's
/// state can live in another account than the host's own bookkeeping).
pub const SETTING_CONNECTION: &str = "CONNMON_TABLE_CONNECTION";
/// The Functions host's storage connection string.
pub const SETTING_WEBJOBS: &str = "AzureWebJobsStorage";
/// Identity-based connection: the table endpoint URL.
pub const SETTING_TABLE_URI: &str = "AzureWebJobsStorage__tableServiceUri";
/// Identity-based connection: the account name (`https://{name}.table.core.windows.net`).
pub const SETTING_ACCOUNT_NAME: &str = "AzureWebJobsStorage__accountName";
/// Identity-based connection: the client id of a user-assigned identity.
pub const SETTING_CLIENT_ID: &str = "AzureWebJobsStorage__clientId";
/// Identity-based connection: `managedidentity` (the only credential a Function App can use here).
pub const SETTING_CREDENTIAL: &str = "AzureWebJobsStorage__credential";
/// Set by App Service / Functions when the app has a managed identity: the local token endpoint.
pub const SETTING_IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
/// Set by App Service / Functions next to `IDENTITY_ENDPOINT`: a secret the token endpoint checks
/// (it mitigates server-side request forgery), sent as `X-IDENTITY-HEADER`.
pub const SETTING_IDENTITY_HEADER: &str = "IDENTITY_HEADER";

/// How requests to the Table service are authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The account key (`AccountKey`, already base64-decoded): every request is signed with
    /// HMAC-SHA256 ("SharedKey" scheme). The key never leaves this value.
    SharedKey {
        account: String,
        key: Secret<Vec<u8>>,
    },
    /// An Entra ID bearer token from the app's managed identity, fetched and cached by the client.
    ManagedIdentity(ManagedIdentity),
}

/// Where and how to fetch managed identity tokens (the App Service / Functions local endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedIdentity {
    /// `IDENTITY_ENDPOINT`: a local URL such as `http://localhost:8081/msi/token`.
    pub endpoint: String,
    /// `IDENTITY_HEADER`, sent as `X-IDENTITY-HEADER`.
    pub header: Secret<String>,
    /// `AzureWebJobsStorage__clientId`: a user-assigned identity; `None` = the system-assigned one.
    pub client_id: Option<String>,
    /// The token audience, [`STORAGE_RESOURCE`].
    pub resource: String,
}

/// The Table service endpoint and credential connmon's table client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEndpoint {
    /// Without a trailing slash: `https://acct.table.core.windows.net`, or path-style for the
    /// emulator: `http://127.0.0.1:10002/devstoreaccount1`.
    pub base_url: String,
    /// The storage account name (the first element of the SharedKey canonicalised resource).
    pub account: String,
    pub credential: Credential,
}

impl TableEndpoint {
    /// Reads the process environment (see [`TableEndpoint::from_lookup`]).
    pub fn from_env() -> Result<TableEndpoint, SettingsError> {
        TableEndpoint::from_lookup(|k| std::env::var(k).ok())
    }

    /// `CONNMON_TABLE_CONNECTION`, else `AzureWebJobsStorage` (a connection string with
    /// AccountName/AccountKey and DefaultEndpointsProtocol/EndpointSuffix or TableEndpoint; or
    /// `UseDevelopmentStorage=true` = the emulator's well-known account at
    /// `http://127.0.0.1:10002/devstoreaccount1`, honouring `DevelopmentStorageProxyUri`), else an
    /// identity-based connection: `AzureWebJobsStorage__tableServiceUri` or
    /// `AzureWebJobsStorage__accountName`, optional `AzureWebJobsStorage__clientId`, with tokens
    /// from `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`. Blank values count as unset, as in
    /// [`crate::settings::Settings::from_lookup`].
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<TableEndpoint, SettingsError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if let Some(cs) = get(SETTING_CONNECTION) {
            return parse_connection_string(SETTING_CONNECTION, &cs);
        }
        if let Some(cs) = get(SETTING_WEBJOBS) {
            return parse_connection_string(SETTING_WEBJOBS, &cs);
        }
        let (base_url, account, from) = if let Some(uri) = get(SETTING_TABLE_URI) {
            let (base, account) = parse_service_uri(&uri)
                .map_err(|why| public_error(SETTING_TABLE_URI, &uri, &why))?;
            (base, account, SETTING_TABLE_URI)
        } else if let Some(name) = get(SETTING_ACCOUNT_NAME) {
            let name = name.trim().to_string();
            check_account_name(&name)
                .map_err(|why| public_error(SETTING_ACCOUNT_NAME, &name, &why))?;
            (
                format!("https://{name}.table.core.windows.net"),
                name,
                SETTING_ACCOUNT_NAME,
            )
        } else {
            return Err(SettingsError {
                name: SETTING_WEBJOBS,
                value: None,
                expected: format!(
                    "the Table store needs a storage account: set {SETTING_WEBJOBS} (or \
                     {SETTING_CONNECTION}) to a connection string with AccountName and AccountKey, \
                     or UseDevelopmentStorage=true for the emulator, or configure an identity-based \
                     connection with {SETTING_ACCOUNT_NAME} or {SETTING_TABLE_URI}"
                ),
            });
        };
        if let Some(c) = get(SETTING_CREDENTIAL) {
            if !c.trim().eq_ignore_ascii_case("managedidentity") {
                return Err(public_error(
                    SETTING_CREDENTIAL,
                    &c,
                    "expected `managedidentity` (the only credential connmon can use for an \
                     identity-based connection)",
                ));
            }
        }
        let endpoint = get(SETTING_IDENTITY_ENDPOINT).ok_or_else(|| SettingsError {
            name: SETTING_IDENTITY_ENDPOINT,
            value: None,
            expected: format!(
                "{from} selects an identity-based connection, which needs the app's managed \
                 identity: enable a system- or user-assigned identity on the Function App (App \
                 Service then sets {SETTING_IDENTITY_ENDPOINT} and {SETTING_IDENTITY_HEADER})"
            ),
        })?;
        let endpoint = endpoint.trim().to_string();
        check_http_url(&endpoint)
            .map_err(|why| public_error(SETTING_IDENTITY_ENDPOINT, &endpoint, &why))?;
        let header = get(SETTING_IDENTITY_HEADER).ok_or_else(|| SettingsError {
            name: SETTING_IDENTITY_HEADER,
            value: None,
            expected: format!(
                "{SETTING_IDENTITY_ENDPOINT} is set but {SETTING_IDENTITY_HEADER} is not; both \
                 come from the platform's managed identity"
            ),
        })?;
        let client_id = get(SETTING_CLIENT_ID).map(|c| c.trim().to_string());
        Ok(TableEndpoint {
            base_url,
            account,
            credential: Credential::ManagedIdentity(ManagedIdentity {
                endpoint,
                header: Secret::new(header.trim().to_string()),
                client_id,
                resource: STORAGE_RESOURCE.to_string(),
            }),
        })
    }

    /// The emulator's well-known account on `base_url` (e.g. `http://127.0.0.1:10002/devstoreaccount1`).
    pub fn development(base_url: &str) -> TableEndpoint {
        TableEndpoint {
            base_url: base_url.trim_end_matches('/').to_string(),
            account: DEV_ACCOUNT.to_string(),
            credential: Credential::SharedKey {
                account: DEV_ACCOUNT.to_string(),
                key: Secret::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(DEV_ACCOUNT_KEY)
                        .expect("the published emulator key is valid base64"),
                ),
            },
        }
    }
}

fn public_error(name: &'static str, value: &str, expected: &str) -> SettingsError {
    SettingsError {
        name,
        value: Some(value.to_string()),
        expected: expected.to_string(),
    }
}

fn secret_error(name: &'static str, expected: impl Into<String>) -> SettingsError {
    SettingsError {
        name,
        value: None,
        expected: expected.into(),
    }
}

/// Parses a storage connection string. Nothing in it is ever quoted back: it holds the key.
fn parse_connection_string(name: &'static str, cs: &str) -> Result<TableEndpoint, SettingsError> {
    const FORMS: &str = "expected a storage connection string such as \
        `DefaultEndpointsProtocol=https;AccountName=…;AccountKey=…;EndpointSuffix=core.windows.net`, \
        one with `TableEndpoint=…;AccountName=…;AccountKey=…`, or `UseDevelopmentStorage=true`";
    let mut protocol = None;
    let mut account = None;
    let mut key = None;
    let mut suffix = None;
    let mut table_endpoint = None;
    let mut dev = None;
    let mut proxy = None;
    let mut has_sas = false;
    for (i, part) in cs.split(';').enumerate() {
        let part = part.trim();
        if part.is_empty() {
            continue; // a trailing `;` is common
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err(secret_error(
                name,
                format!(
                    "part {} of the connection string is not Key=Value; {FORMS}",
                    i + 1
                ),
            ));
        };
        let v = v.trim().to_string();
        // Keys are matched case-insensitively, as the Azure SDKs do.
        match k.trim().to_ascii_lowercase().as_str() {
            "defaultendpointsprotocol" => protocol = Some(v),
            "accountname" => account = Some(v),
            "accountkey" => key = Some(v),
            "endpointsuffix" => suffix = Some(v),
            "tableendpoint" => table_endpoint = Some(v),
            "usedevelopmentstorage" => dev = Some(v),
            "developmentstorageproxyuri" => proxy = Some(v),
            "sharedaccesssignature" => has_sas = true,
            // BlobEndpoint, QueueEndpoint, FileEndpoint, … belong to other services.
            _ => {}
        }
    }

    if let Some(dev) = dev {
        if !dev.eq_ignore_ascii_case("true") {
            return Err(secret_error(
                name,
                "UseDevelopmentStorage must be `true` when present",
            ));
        }
        let base = match proxy {
            None => format!("http://127.0.0.1:{DEV_TABLE_PORT}/{DEV_ACCOUNT}"),
            Some(p) => {
                let url = reqwest::Url::parse(&p)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                    .ok_or_else(|| {
                        secret_error(
                            name,
                            "DevelopmentStorageProxyUri must be an absolute http:// or https:// URL",
                        )
                    })?;
                // As the Azure SDKs do: the proxy's scheme and host, the emulator's table port.
                // `Host`'s Display puts IPv6 addresses in brackets, as a URL needs.
                let host = url.host().map(|h| h.to_string()).unwrap_or_default();
                format!("{}://{host}:{DEV_TABLE_PORT}/{DEV_ACCOUNT}", url.scheme())
            }
        };
        return Ok(TableEndpoint::development(&base));
    }

    if has_sas && key.is_none() {
        return Err(secret_error(
            name,
            "shared access signature connection strings are not supported: use an AccountKey, \
             or an identity-based connection",
        ));
    }
    let account = account.ok_or_else(|| {
        secret_error(
            name,
            format!("the connection string has no AccountName; {FORMS}"),
        )
    })?;
    check_account_name(&account)
        .map_err(|why| secret_error(name, format!("its AccountName is not valid: {why}")))?;
    let key = key.ok_or_else(|| {
        secret_error(
            name,
            format!("the connection string has no AccountKey; {FORMS}"),
        )
    })?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .ok()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| secret_error(name, "its AccountKey is not valid base64"))?;

    let base_url = match table_endpoint {
        Some(te) => {
            check_http_url(&te).map_err(|why| {
                secret_error(name, format!("its TableEndpoint is not valid: {why}"))
            })?;
            te.trim_end_matches('/').to_string()
        }
        None => {
            let protocol = protocol.unwrap_or_else(|| "https".to_string());
            let protocol = protocol.to_ascii_lowercase();
            if protocol != "https" && protocol != "http" {
                return Err(secret_error(
                    name,
                    "DefaultEndpointsProtocol must be `https` or `http`",
                ));
            }
            let suffix = suffix.unwrap_or_else(|| "core.windows.net".to_string());
            let suffix = suffix.trim_matches('.');
            if suffix.is_empty()
                || !suffix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                return Err(secret_error(
                    name,
                    "EndpointSuffix must be a DNS suffix such as core.windows.net",
                ));
            }
            format!("{protocol}://{account}.table.{suffix}")
        }
    };
    Ok(TableEndpoint {
        base_url,
        account: account.clone(),
        credential: Credential::SharedKey {
            account,
            key: Secret::new(key),
        },
    })
}

/// Storage account names are 3–24 lowercase letters and digits; they become a host name.
fn check_account_name(name: &str) -> Result<(), String> {
    let ok = (3..=24).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err("expected a storage account name: 3 to 24 lowercase letters and digits".into())
    }
}

fn check_http_url(v: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(v.trim())
        .map_err(|e| format!("expected an absolute http:// or https:// URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("expected an absolute http:// or https:// URL".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(
            "expected a URL without a query or fragment (a SAS token is not supported)".into(),
        );
    }
    Ok(url)
}

/// `https://acct.table.core.windows.net[/]` → (base, "acct"); path-style emulator URLs
/// (`http://127.0.0.1:10002/devstoreaccount1`) name the account in the first path segment.
fn parse_service_uri(uri: &str) -> Result<(String, String), String> {
    let url = check_http_url(uri)?;
    let host = url.host_str().unwrap_or_default();
    let first_segment = url
        .path_segments()
        .and_then(|mut s| s.next())
        .filter(|s| !s.is_empty());
    let path_style = host.eq_ignore_ascii_case("localhost")
        || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok();
    let account = if path_style {
        first_segment
            .ok_or("a path-style (emulator) URL must name the account in its path")?
            .to_string()
    } else {
        host.split('.').next().unwrap_or_default().to_string()
    };
    check_account_name(&account)?;
    Ok((uri.trim().trim_end_matches('/').to_string(), account))
}
