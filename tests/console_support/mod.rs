//! Helpers of the console tests: the real application with the console on (on its admin
//! listener), API tokens to sign in with, and an HTTP session that signs in like a browser
//! (cookies kept by hand, so the tests see every `Set-Cookie` exactly as sent).
#![allow(dead_code)]

use std::collections::BTreeMap;

use orgsync::console::ConsoleConfig;
use orgsync::tokens::{Access, TokenName};
use reqwest::header::{HeaderMap, COOKIE, SET_COOKIE};
use reqwest::redirect::Policy;
use reqwest::StatusCode;
use sqlx::PgPool;

use super::common::{config, TestApp, SECRET};

/// The app with the console on: receiver, workers (unless `worker` is false), admin listener.
pub async fn console_app(pool: &PgPool, worker: bool) -> TestApp {
    TestApp::spawn(pool.clone(), console_config(worker)).await
}

pub fn console_config(worker: bool) -> orgsync::app::ServeConfig {
    let mut c = config(Some(SECRET), worker);
    c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    c.console = Some(ConsoleConfig::default());
    c
}

/// A new API token's text.
pub async fn token(pool: &PgPool, name: &str, access: Access) -> String {
    orgsync::tokens::create(pool, &TokenName::parse(name).unwrap(), access)
        .await
        .unwrap()
        .token
}

/// The console's base URL of `app`.
pub fn base(app: &TestApp) -> String {
    format!(
        "http://{}",
        app.admin_addr.expect("the console needs the admin listener")
    )
}

/// A browser-like session: keeps the cookies the console sets, follows no redirect by itself.
pub struct Session {
    pub base: String,
    pub http: reqwest::Client,
    pub cookies: BTreeMap<String, String>,
}

/// A response read whole.
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> Option<&str> {
        self.headers.get("location").and_then(|v| v.to_str().ok())
    }

    /// Every `Set-Cookie` header, as sent.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The value of the first `name="csrf"` hidden field.
    pub fn csrf(&self) -> String {
        hidden_value(&self.body, "csrf").expect("the page has a CSRF field")
    }
}

/// The `value` of the first `<input … name="NAME" value="…">` in `html`.
pub fn hidden_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_owned())
}

impl Session {
    pub fn new(base: String) -> Self {
        Self {
            base,
            http: reqwest::Client::builder().redirect(Policy::none()).build().unwrap(),
            cookies: BTreeMap::new(),
        }
    }

    /// Signs in with `token`; panics unless the console accepts it.
    pub async fn signed_in(base: String, token: &str) -> Self {
        let mut s = Self::new(base);
        let page = s.login(token).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "sign-in accepted: {}", page.body);
        s
    }

    /// Loads the sign-in form and submits `token` with the form's own login CSRF value.
    pub async fn login(&mut self, token: &str) -> Page {
        let form = self.get("/console/login").await;
        assert_eq!(form.status, StatusCode::OK);
        let nonce = hidden_value(&form.body, "login_csrf").unwrap();
        self.post("/console/login", &[("token", token), ("login_csrf", &nonce)])
            .await
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn read(&mut self, response: reqwest::Response) -> Page {
        let status = response.status();
        let headers = response.headers().clone();
        for c in headers.get_all(SET_COOKIE) {
            let c = c.to_str().unwrap();
            let pair = c.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            let removed = c.to_ascii_lowercase().contains("max-age=0") || v.is_empty();
            if removed {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        let body = response.text().await.unwrap();
        Page { status, headers, body }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Page {
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = req.send().await.unwrap();
        self.read(response).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        self.post_with(path, form, &[]).await
    }

    pub async fn post_with(&mut self, path: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> Page {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .form(form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = req.send().await.unwrap();
        self.read(response).await
    }

    /// GETs `path` and asserts 200.
    pub async fn page(&mut self, path: &str) -> String {
        let page = self.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "GET {path}: {}", page.body);
        page.body
    }
}

/// Every page of the console a signed-in operator can open without parameters.
pub const PAGES: &[&str] = &[
    "/console/",
    "/console/overview/live",
    "/console/jobs",
    "/console/resync",
    "/console/resync/live",
    "/console/access",
    "/console/changes",
];
