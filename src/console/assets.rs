//! The console's stylesheet and its one script, compiled into the binary and served from the
//! console itself (`/console/assets/…`): nothing is fetched from elsewhere, and the
//! Content-Security-Policy allows scripts and styles from the console's own origin only.
//!
//! The script (a few dozen lines, no library) re-renders the parts of a page marked
//! `data-refresh-url` (the overview, a job that is still running, the resync page while a run
//! is going) and follows the change feed over server-sent events.

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::ConsoleError;

/// Where the stylesheet is served.
pub const STYLESHEET: &str = "/console/assets/console.css";
/// Where the script is served.
pub const SCRIPT: &str = "/console/assets/console.js";

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// `GET /console/assets/{name}`. Served without a session: they hold nothing private.
pub async fn serve(Path(name): Path<String>) -> Response {
    let (body, content_type) = match name.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return ConsoleError::NotFound.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Revalidated each time: a new release's assets are picked up at once.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
