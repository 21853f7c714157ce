//! The Clerk Backend API client: the few list and get endpoints the resync and the self-heal
//! need (and, in `writes.rs`, the writes of the write path, bounded by a deadline), with a request budget that keeps the process under Clerk's rate limit, retries with
//! backoff for what is worth retrying, and errors that say what to fix.
//!
//! Contract of every request method:
//! - a 429 waits `Retry-After` (capped by [`RetryPolicy::max_delay`]) and retries; 5xx answers,
//!   timeouts and connection failures retry with exponential backoff and jitter; both are bounded
//!   by [`RetryPolicy::max_retries`], after which the last failure is returned;
//! - 401/403 fail at once with [`ClerkApiError::Auth`], naming the key problem;
//! - other 4xx fail at once (retrying the same request cannot help);
//! - list pages are parsed item by item: an item that does not have the expected shape is
//!   reported in [`Page::invalid`] (with whatever id it carries) instead of failing the page, so
//!   one odd object never stops a resync, and the resync can refuse to treat it as "gone".
//!
//! Nothing here logs or returns the secret key or response payloads; decode errors have quoted
//! input removed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use serde::Deserialize;

mod access;
mod budget;
mod rbac_writes;
mod response;
mod role_sets;
mod writes;

use budget::Budget;
pub use rbac_writes::{
    NewPermission, NewRole, NewRoleSet, PermissionChanges, RoleChanges, RoleSetChanges, RoleSetRoles,
};
use response::*;
pub use writes::{
    current_meter, measured, ClerkWriteError, Dated, MembershipAnswer, MetadataChanges, NewInvitation, NewOrganization,
    OrganizationChanges,
};

use super::events::{Membership, Organization, User};
use super::ids::{HotelId, UserId};

/// Clerk's production base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.clerk.com";
/// The largest `limit` Clerk accepts on its list endpoints.
pub const PAGE_LIMIT: u32 = 500;
/// The most ids one filter parameter (`organization_id`, `user_id`) accepts.
pub const MAX_FILTER_IDS: usize = 100;
/// Clerk's rate-limit window.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// How failed requests are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First backoff delay (before jitter); each retry multiplies it by 2.
    pub min_delay: Duration,
    /// Largest backoff delay, and the longest `Retry-After` honoured.
    pub max_delay: Duration,
    /// Retries after the first attempt (429, 5xx, timeouts and connection failures together).
    pub max_retries: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // About 0.5 + 1 + 2 + 4 + 8 + 16 s (plus jitter) before giving up: long enough to ride out
        // a deploy or a short Clerk incident, short enough that a resync fails in under a minute
        // or two rather than hanging.
        Self {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retries: 6,
        }
    }
}

/// Why a Clerk API request failed (after the retries the policy allows).
#[derive(Debug, thiserror::Error)]
pub enum ClerkApiError {
    /// 401/403: the key is wrong, revoked, of another instance, or lacks permission.
    #[error("Clerk refused CLERK_SECRET_KEY ({status} on {endpoint}): {hint}. Clerk said: {message}")]
    Auth {
        status: u16,
        endpoint: String,
        hint: &'static str,
        message: String,
    },
    /// Still rate limited after every retry.
    #[error("Clerk kept answering 429 Too Many Requests on {endpoint} ({attempts} attempts); lower CLERK_RATE_LIMIT")]
    RateLimited { endpoint: String, attempts: usize },
    /// Still a 5xx after every retry.
    #[error("Clerk answered {status} on {endpoint} ({attempts} attempts): {message}")]
    Server {
        status: u16,
        endpoint: String,
        attempts: usize,
        message: String,
    },
    /// Timeouts or connection failures on every attempt.
    #[error("could not get an answer from Clerk for {endpoint} ({attempts} attempts): {reason}")]
    Transport {
        endpoint: String,
        attempts: usize,
        reason: String,
    },
    /// 404 with a Clerk error body: the object does not exist (in this instance).
    #[error("Clerk has no such object ({endpoint}): {message}")]
    NotFound { endpoint: String, message: String },
    /// Any other 4xx: the request itself is wrong; retrying cannot help.
    #[error("Clerk rejected the request {endpoint} ({status}): {message}")]
    Request {
        status: u16,
        endpoint: String,
        message: String,
    },
    /// A 2xx whose body is not the JSON the endpoint promises.
    #[error("Clerk's answer to {endpoint} is not the expected JSON: {reason}")]
    Decode { endpoint: String, reason: String },
    /// The client cannot be built from its configuration.
    #[error("Clerk API configuration: {0}")]
    Config(String),
}

impl ClerkApiError {
    /// True for 401/403: nothing will work until the key is fixed.
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Auth { .. })
    }
}

/// One page of a list endpoint.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items that parsed.
    pub items: Vec<T>,
    /// The items that did not parse, with what could be read of their ids.
    pub invalid: Vec<InvalidItem>,
    /// `total_count` for endpoints that return one.
    pub total_count: Option<i64>,
    /// How many items the page held (parsed or not): a page shorter than the limit is the last.
    pub len: usize,
    /// The id of the page's last item, parsed or not (the cursor for the next users page).
    pub last_id: Option<String>,
}

/// A list item that does not have the shape orgsync needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidItem {
    /// The item's own `id`, when it has a string one.
    pub id: Option<String>,
    /// For a membership: its `organization.id`.
    pub organization_id: Option<String>,
    /// For a membership: its `public_user_data.user_id`.
    pub user_id: Option<String>,
    /// Why it did not parse (quoted input removed).
    pub reason: String,
}

/// How to reach the Clerk Backend API: filled by the command line, or by a program embedding
/// orgsync.
#[derive(Clone)]
pub struct ClerkConfig {
    /// Base URL, e.g. `https://api.clerk.com`.
    pub api_url: String,
    /// The instance's secret key (`sk_live_…` / `sk_test_…`); `None` disables the API.
    pub secret_key: Option<String>,
    /// Most requests per 10 seconds; `None`: 1000 for `sk_live_` keys, 100 otherwise.
    pub rate_limit: Option<u32>,
    /// Timeout of one request.
    pub timeout: Duration,
}

impl std::fmt::Debug for ClerkConfig {
    /// Never prints the secret key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClerkConfig")
            .field("api_url", &self.api_url)
            .field("secret_key", &self.secret_key.as_ref().map(|_| "<redacted>"))
            .field("rate_limit", &self.rate_limit)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A Clerk Backend API client. Cheap to clone: clones share the connection pool and the
/// request budget, so a whole process stays under one rate limit.
#[derive(Clone)]
pub struct ClerkClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Base URL without a trailing slash and without `/v1`.
    base_url: String,
    /// `Bearer sk_...`, marked sensitive so it never shows in debug output.
    auth: reqwest::header::HeaderValue,
    budget: Budget,
    retry: RetryPolicy,
}

impl fmt::Debug for ClerkClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("ClerkClient")
            .field("base_url", &self.inner.base_url)
            .field("rate_limit_per_10s", &self.inner.budget.limit)
            .finish_non_exhaustive()
    }
}

impl ClerkClient {
    /// Builds a client for `base_url` (e.g. `https://api.clerk.com`; a trailing `/v1` is
    /// accepted), authenticating with `secret_key`, starting at most `rate_limit_per_10s`
    /// requests in any 10 seconds, each limited to `timeout`.
    ///
    /// Err([`ClerkApiError::Config`]) when the URL is not http(s), the key is not a secret key
    /// (`sk_...`; a publishable `pk_...` key is named as such), or the budget is 0.
    pub fn new(
        base_url: &str,
        secret_key: &str,
        rate_limit_per_10s: u32,
        timeout: Duration,
    ) -> Result<Self, ClerkApiError> {
        let base = base_url.trim().trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base).to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(ClerkApiError::Config(format!(
                "CLERK_API_URL must be an http(s) URL, not {base:?}"
            )));
        }
        let key = secret_key.trim();
        if key.starts_with("pk_") {
            return Err(ClerkApiError::Config(
                "CLERK_SECRET_KEY holds a publishable key (pk_...); use the instance's secret key (sk_...)".into(),
            ));
        }
        if !key.starts_with("sk_") || key.len() < 4 || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ClerkApiError::Config(
                "CLERK_SECRET_KEY must be a Clerk secret key (sk_live_... or sk_test_...)".into(),
            ));
        }
        if rate_limit_per_10s == 0 {
            return Err(ClerkApiError::Config("CLERK_RATE_LIMIT must be at least 1".into()));
        }
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            ClerkApiError::Config("CLERK_SECRET_KEY contains characters not allowed in a header".into())
        })?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("orgsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClerkApiError::Config(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url: base,
                auth,
                budget: Budget::new(rate_limit_per_10s as usize),
                retry: RetryPolicy::default(),
            }),
        })
    }

    /// Builds a client from its configuration. Err when no secret key is configured, or as
    /// [`ClerkClient::new`].
    pub fn from_config(config: &ClerkConfig) -> anyhow::Result<Self> {
        let key = config
            .secret_key
            .as_deref()
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!("CLERK_SECRET_KEY is not set (the Clerk Backend API needs the instance's secret key)")
            })?;
        // Clerk's limits: 1000 requests / 10 s for production instances, 100 for development.
        let rate = config
            .rate_limit
            .unwrap_or(if key.trim().starts_with("sk_live_") { 1000 } else { 100 });
        Ok(Self::new(&config.api_url, key, rate, config.timeout)?)
    }

    /// The same client (same connections) with another retry policy and its own budget of
    /// `rate_limit_per_10s`; meant for tests and tools.
    pub fn with_retry_policy(&self, retry: RetryPolicy) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                http: inner.http.clone(),
                base_url: inner.base_url.clone(),
                auth: inner.auth.clone(),
                budget: Budget::new(inner.budget.limit),
                retry,
            }),
        }
    }

    /// The base URL requests go to (without `/v1`).
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The request budget per 10 seconds.
    pub fn rate_limit_per_10s(&self) -> usize {
        self.inner.budget.limit
    }

    /// `GET /v1/organizations`, oldest first (so organizations created while a listing runs
    /// land on its last pages instead of shifting the earlier ones).
    pub async fn list_organizations(&self, offset: u32, limit: u32) -> Result<Page<Organization>, ClerkApiError> {
        let query = [
            ("order_by", "created_at".to_owned()),
            ("limit", limit.clamp(1, PAGE_LIMIT).to_string()),
            ("offset", offset.to_string()),
        ];
        let body = self.get("organizations", "/v1/organizations", &query).await?;
        parse_list(&body, "GET /v1/organizations")
    }

    /// `GET /v1/organizations?organization_id=...`: those of `ids` (at most 100) that exist.
    pub async fn organizations_by_id(&self, ids: &[HotelId]) -> Result<Page<Organization>, ClerkApiError> {
        assert!(
            ids.len() <= MAX_FILTER_IDS,
            "Clerk accepts at most {MAX_FILTER_IDS} ids per filter"
        );
        let mut query = vec![("limit", PAGE_LIMIT.to_string())];
        query.extend(ids.iter().map(|id| ("organization_id", id.as_str().to_owned())));
        let body = self.get("organizations", "/v1/organizations", &query).await?;
        parse_list(&body, "GET /v1/organizations?organization_id=")
    }

    /// `GET /v1/organizations/{id}`: Ok(None) when Clerk answers 404 with its error body.
    pub async fn get_organization(&self, id: &HotelId) -> Result<Option<Organization>, ClerkApiError> {
        let path = format!("/v1/organizations/{}", id.as_str());
        match self.get("organization", &path, &[]).await {
            Ok(body) => decode::<Organization>(&body, "GET /v1/organizations/{id}").map(Some),
            Err(ClerkApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/organization_memberships`: every membership of the instance, oldest first.
    pub async fn list_memberships(&self, offset: u32, limit: u32) -> Result<Page<Membership>, ClerkApiError> {
        let query = [
            ("order_by", "created_at".to_owned()),
            ("limit", limit.clamp(1, PAGE_LIMIT).to_string()),
            ("offset", offset.to_string()),
        ];
        let body = self
            .get("organization_memberships", "/v1/organization_memberships", &query)
            .await?;
        parse_list(&body, "GET /v1/organization_memberships")
    }

    /// `GET /v1/organizations/{id}/memberships`, optionally only those of `user_ids` (at most
    /// 100). Ok(None) when the organization does not exist.
    pub async fn list_organization_memberships(
        &self,
        organization: &HotelId,
        user_ids: &[UserId],
        offset: u32,
        limit: u32,
    ) -> Result<Option<Page<Membership>>, ClerkApiError> {
        assert!(
            user_ids.len() <= MAX_FILTER_IDS,
            "Clerk accepts at most {MAX_FILTER_IDS} ids per filter"
        );
        let path = format!("/v1/organizations/{}/memberships", organization.as_str());
        let mut query = vec![
            ("order_by", "created_at".to_owned()),
            ("limit", limit.clamp(1, PAGE_LIMIT).to_string()),
            ("offset", offset.to_string()),
        ];
        query.extend(user_ids.iter().map(|id| ("user_id", id.as_str().to_owned())));
        match self.get("organization_memberships_of", &path, &query).await {
            Ok(body) => parse_list(&body, "GET /v1/organizations/{id}/memberships").map(Some),
            Err(ClerkApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/users`, oldest first, after the user `starting_after` (Clerk's cursor: deep
    /// offsets get slower and time out on large instances, a cursor page costs the same
    /// anywhere). The listing ends with a page shorter than `limit`.
    pub async fn list_users(&self, starting_after: Option<&str>, limit: u32) -> Result<Page<User>, ClerkApiError> {
        let mut query = vec![
            ("order_by", "created_at".to_owned()),
            ("limit", limit.clamp(1, PAGE_LIMIT).to_string()),
        ];
        if let Some(after) = starting_after {
            query.push(("starting_after", after.to_owned()));
        }
        let body = self.get("users", "/v1/users", &query).await?;
        parse_array(&body, "GET /v1/users")
    }

    /// `GET /v1/users?user_id=...`: those of `ids` (at most 100) that exist.
    pub async fn users_by_id(&self, ids: &[UserId]) -> Result<Page<User>, ClerkApiError> {
        assert!(
            ids.len() <= MAX_FILTER_IDS,
            "Clerk accepts at most {MAX_FILTER_IDS} ids per filter"
        );
        let mut query = vec![("limit", PAGE_LIMIT.to_string())];
        query.extend(ids.iter().map(|id| ("user_id", id.as_str().to_owned())));
        let body = self.get("users", "/v1/users", &query).await?;
        parse_array(&body, "GET /v1/users?user_id=")
    }

    /// `GET /v1/users/count`: how many users the instance has.
    pub async fn count_users(&self) -> Result<i64, ClerkApiError> {
        Ok(self.count_users_with_clock().await?.0)
    }

    /// [`Self::count_users`], with Clerk's clock at the answer (its `Date`, whole seconds,
    /// truncated; None when unreadable).
    pub async fn count_users_with_clock(&self) -> Result<(i64, Option<chrono::DateTime<chrono::Utc>>), ClerkApiError> {
        #[derive(Deserialize)]
        struct TotalCount {
            total_count: i64,
        }
        let (body, date) = self.get_dated("users_count", "/v1/users/count", &[]).await?;
        Ok((decode::<TotalCount>(&body, "GET /v1/users/count")?.total_count, date))
    }

    /// Clerk's clock: the `Date` of its answer to a cheap request (whole seconds, truncated), read
    /// before a listing begins so that it is no later than the listing's start in Clerk's time.
    /// Ok(None) when the answer carries no readable `Date`.
    pub async fn clock(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, ClerkApiError> {
        Ok(self.count_users_with_clock().await?.1)
    }

    /// One GET with the budget and the retry policy. Ok is a 2xx body. `label` is a
    /// low-cardinality name for metrics; `path` starts with `/v1/`.
    async fn get(
        &self,
        label: &'static str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<bytes::Bytes, ClerkApiError> {
        Ok(self.get_dated(label, path, query).await?.0)
    }

    /// [`Self::get`], with the answer's `Date` header.
    async fn get_dated(
        &self,
        label: &'static str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<(bytes::Bytes, Option<chrono::DateTime<chrono::Utc>>), ClerkApiError> {
        let inner = &*self.inner;
        let url = format!("{}{}", inner.base_url, path);
        // Errors name the path and the paging position, never the key or a body.
        let endpoint = describe(path, query);
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(inner.retry.min_delay)
            .with_max_delay(inner.retry.max_delay)
            .with_max_times(inner.retry.max_retries)
            .with_jitter()
            .build();
        let mut attempts = 0usize;
        loop {
            inner.budget.acquire().await;
            attempts += 1;
            let started = std::time::Instant::now();
            let sent = inner
                .http
                .get(&url)
                .header(reqwest::header::AUTHORIZATION, inner.auth.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .query(query)
                .send()
                .await;
            // Read the body inside the same attempt: the timeout covers it, and a connection cut
            // mid-body is as retryable as one cut before the headers.
            let answer = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(parse_retry_after);
                    let date = resp
                        .headers()
                        .get(reqwest::header::DATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
                        .map(|d| d.with_timezone(&chrono::Utc));
                    resp.bytes().await.map(|body| (status, (retry_after, date), body))
                }
                Err(e) => Err(e),
            };
            let status_label = match &answer {
                Ok((status, _, _)) => status.as_str().to_owned(),
                Err(e) if e.is_timeout() => "timeout".to_owned(),
                Err(_) => "error".to_owned(),
            };
            metrics::counter!("orgsync_clerk_requests_total", "endpoint" => label, "status" => status_label)
                .increment(1);
            metrics::histogram!("orgsync_clerk_request_duration_seconds", "endpoint" => label)
                .record(started.elapsed().as_secs_f64());

            // Decide: done, fail now, or wait `delay` and retry (giving `failure` if out of retries).
            let (delay, failure) = match answer {
                Ok((status, (_, date), body)) if status.is_success() => return Ok((body, date)),
                Ok((status, (retry_after, _), body)) if status.as_u16() == 429 => {
                    let next = backoff.next();
                    // Clerk's Retry-After says when the window reopens: wait that long (bounded),
                    // and hold every other request of this process too, since they would only
                    // collect 429s of their own meanwhile.
                    let delay = next.map(|d| retry_after.map_or(d, |ra| ra.min(inner.retry.max_delay)));
                    if let Some(d) = delay {
                        inner.budget.pause_for(d);
                    }
                    drop(body);
                    (
                        delay,
                        ClerkApiError::RateLimited {
                            endpoint: endpoint.clone(),
                            attempts,
                        },
                    )
                }
                Ok((status, _, body)) if status.is_server_error() => (
                    backoff.next(),
                    ClerkApiError::Server {
                        status: status.as_u16(),
                        endpoint: endpoint.clone(),
                        attempts,
                        message: error_message(&body),
                    },
                ),
                Ok((status, _, body)) => return Err(client_error(status.as_u16(), &endpoint, &body)),
                Err(e) => (
                    backoff.next(),
                    ClerkApiError::Transport {
                        endpoint: endpoint.clone(),
                        attempts,
                        reason: transport_reason(&e),
                    },
                ),
            };
            match delay {
                Some(delay) => {
                    tracing::warn!(endpoint = %endpoint, attempt = attempts, retry_in_ms = delay.as_millis() as u64,
                                   error = %failure, "Clerk request failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(failure),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn keys_and_urls_are_checked() {
        let t = Duration::from_secs(5);
        assert!(ClerkClient::new("https://api.clerk.com", "sk_test_abc", 100, t).is_ok());
        let c = ClerkClient::new("https://api.clerk.com/v1/", "sk_live_abc", 100, t).unwrap();
        assert_eq!(c.base_url(), "https://api.clerk.com");
        let pk = ClerkClient::new("https://api.clerk.com", "pk_test_abc", 100, t).unwrap_err();
        assert!(pk.to_string().contains("publishable"), "{pk}");
        assert!(ClerkClient::new("https://api.clerk.com", "whatever", 100, t).is_err());
        assert!(ClerkClient::new("api.clerk.com", "sk_test_abc", 100, t).is_err());
        assert!(ClerkClient::new("https://api.clerk.com", "sk_test_abc", 0, t).is_err());
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let c = ClerkClient::new(
            "https://api.clerk.com",
            "sk_test_supersecret",
            100,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("supersecret"));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let v = |s: &str| reqwest::header::HeaderValue::from_str(s).unwrap();
        assert_eq!(parse_retry_after(&v("2")), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(&v("0.5")), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_retry_after(&v("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&v("soon")), None);
    }

    #[test]
    fn error_bodies_are_summarised_not_echoed() {
        let body =
            br#"{"errors":[{"message":"Unauthorized","long_message":"Invalid key","code":"authentication_invalid"}]}"#;
        assert_eq!(error_message(body), "Invalid key (authentication_invalid)");
        assert_eq!(
            error_message(b"<html>secret stuff</html>"),
            "a 25-byte body that is not a Clerk error"
        );
        assert!(matches!(client_error(404, "x", body), ClerkApiError::NotFound { .. }));
        // A 404 that is not Clerk's own error shape is not "no such object".
        assert!(matches!(
            client_error(404, "x", b"<html>"),
            ClerkApiError::Request { .. }
        ));
        assert!(client_error(401, "x", body).is_auth());
        assert!(client_error(403, "x", body).is_auth());
    }

    #[test]
    fn invalid_items_keep_their_ids_and_lose_their_values() {
        let body = br#"{"data":[
            {"id":"org_1","name":"A","created_at":1,"updated_at":2},
            {"id":"org_2","name":5,"created_at":1,"updated_at":2},
            {"id":"orgmem_1","role":"","organization":{"id":"org_9"},"public_user_data":{"user_id":"user_1"}}
        ],"total_count":3}"#;
        let page: Page<Organization> = parse_list(body, "t").unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.len, 3);
        assert_eq!(page.total_count, Some(3));
        assert_eq!(page.last_id.as_deref(), Some("orgmem_1"));
        assert_eq!(page.invalid[0].id.as_deref(), Some("org_2"));
        assert_eq!(page.invalid[1].organization_id.as_deref(), Some("org_9"));
        assert_eq!(page.invalid[1].user_id.as_deref(), Some("user_1"));
    }

    #[test]
    fn redaction_removes_quoted_input() {
        let e = serde_json::from_str::<i64>(r#""maria@example.com""#).unwrap_err();
        let r = redact(&e);
        assert!(!r.contains("maria"), "{r}");
    }

    #[tokio::test(start_paused = true)]
    async fn budget_never_starts_more_than_the_limit_in_a_window() {
        let budget = Budget::new(3);
        let start = Instant::now();
        for _ in 0..3 {
            budget.acquire().await;
        }
        assert_eq!(Instant::now(), start, "the first `limit` requests start at once");
        budget.acquire().await;
        assert!(
            Instant::now() >= start + RATE_WINDOW,
            "the fourth waits for the window to slide"
        );
        budget.pause_for(Duration::from_secs(3));
        let before = Instant::now();
        budget.acquire().await;
        assert!(
            Instant::now() >= before + Duration::from_secs(3),
            "a 429 pause holds everyone"
        );
    }
}
