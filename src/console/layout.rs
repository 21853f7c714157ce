//! The page shell shared by every console page, and the small formatting helpers they use.
//! Everything interpolated into `html!` is escaped by maud; nothing here emits raw markup.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

use super::auth::Operator;

/// The sections of the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Jobs,
    Resync,
    Access,
    Changes,
}

const SECTIONS: [(Section, &str, &str); 5] = [
    (Section::Overview, "/console/", "Overview"),
    (Section::Jobs, "/console/jobs", "Jobs"),
    (Section::Resync, "/console/resync", "Resync"),
    (Section::Access, "/console/access", "Access"),
    (Section::Changes, "/console/changes", "Changes"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · orgsync console" }
            link rel="stylesheet" href=(super::assets::STYLESHEET);
            script src=(super::assets::SCRIPT) defer {}
        }
    }
}

/// A page of the signed-in console: navigation, who is signed in (and whether read-only), a
/// sign-out button, then `body`.
pub fn page(title: &str, section: Section, operator: &Operator, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/console/" { "orgsync" }
                    nav {
                        @for (s, href, label) in SECTIONS {
                            @if s == section {
                                a.current href=(href) aria-current="page" { (label) }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                    }
                    div.who {
                        span #operator { (operator.token_name) }
                        @if !operator.can_write { " " span.badge #read-only { "read-only" } }
                        form.inline method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(operator.csrf());
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page without navigation (sign-in).
pub fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main.narrow { (body) } }
        }
    }
}

/// The answer to a failed request.
pub fn error_page(status: StatusCode, message: &str) -> Markup {
    bare_page(
        status.canonical_reason().unwrap_or("Error"),
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.problem role="alert" { (message) }
            p { a href="/console/" { "Back to the overview" } }
        },
    )
}

/// A time as everywhere in orgsync's output (RFC 3339, whole seconds, UTC).
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A `<time>` element: the exact time, and how long ago as its title.
pub fn when(t: DateTime<Utc>) -> Markup {
    html! { time datetime=(time(t)) title=(format!("{} ago", ago(t))) { (time(t)) } }
}

/// How long ago `t` was, e.g. `3m 12s`.
pub fn ago(t: DateTime<Utc>) -> String {
    crate::ops::status::human_secs((Utc::now() - t).num_milliseconds() as f64 / 1000.0)
}

/// A byte count for people.
pub fn bytes(n: usize) -> String {
    match n {
        n if n < 1024 => format!("{n} bytes"),
        n if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
    }
}

/// `n` with thousands separated by commas.
pub fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// Percent-encodes a query-string value.
pub fn query_value(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sizes_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(-1000), "-1,000");
        assert_eq!(bytes(12), "12 bytes");
        assert_eq!(bytes(2048), "2.0 KiB");
    }

    #[test]
    fn interpolated_text_is_escaped() {
        let hostile = "<script>alert(1)</script>";
        let out = html! { p { (hostile) } a href=(hostile) { "x" } }.into_string();
        assert!(!out.contains("<script>"), "{out}");
        assert!(out.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{out}");
    }
}
