//! `GET /ui`: the web console, a page that reads and steers the admin API
//! from the browser.
//!
//! The page, its scripts and its style sheet are compiled into the binary
//! (`admin/ui/`), so the console works offline and nothing is fetched from
//! elsewhere at run time: no CDN, no fonts, no framework. The page holds no
//! data, so it needs no token; every data request it makes carries the
//! token the user typed, in an `Authorization` header (never a cookie, so
//! another site cannot make the browser send it: CSRF-safe). The token
//! lives only in the tab's memory.
//!
//! Every answer carries a Content Security Policy that allows only this
//! origin (`default-src 'self'`) and no framing, and `nosniff`.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
use axum::response::{IntoResponse, Response};

/// The page: markup only; the script builds everything from API answers.
pub const PAGE: &str = include_str!("ui/index.html");
/// The script, an ES module.
pub const SCRIPT: &str = include_str!("ui/app.js");
/// The dead-letters view, a module `app.js` imports.
pub const DEAD_LETTERS_SCRIPT: &str = include_str!("ui/dead-letters.js");
/// The style sheet.
pub const STYLE: &str = include_str!("ui/app.css");
/// The tab's icon (browsers ask for one; without it every load logs a 404).
pub const ICON: &str = include_str!("ui/icon.svg");

/// Only this origin, for everything; no inline script or style; not framed,
/// no `<base>`, forms post nowhere.
pub const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'";

pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn dead_letters_script() -> Response {
    asset("text/javascript; charset=utf-8", DEAD_LETTERS_SCRIPT)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

pub(super) async fn icon() -> Response {
    asset("image/svg+xml; charset=utf-8", ICON)
}

/// `/` and `/ui/`: to the console, so the admin address alone opens it.
pub(super) async fn to_console() -> axum::response::Redirect {
    axum::response::Redirect::permanent("/ui")
}

/// An embedded file with the console's headers. `no-cache`: the browser
/// checks again, so a new binary's console replaces the old one at once.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, CSP),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (X_FRAME_OPTIONS, "DENY"),
            (REFERRER_POLICY, "no-referrer"),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
