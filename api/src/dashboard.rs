//! The web dashboard (DESIGN §15), served at `/` by `npanel serve`.
//!
//! # What it is
//! One page, `GET /` ([`page`]), its script `GET /dashboard.js` ([`script`]) and its style
//! `GET /dashboard.css` ([`style`]): plain HTML, CSS and ES2020 from `api/src/dashboard/`,
//! built into the binary with `include_str!`. No build step, no Node toolchain, nothing loaded
//! from elsewhere, so it works on a host without internet. The routes are static and
//! unauthenticated, like `/login`; everything the page shows comes from the JWT routes of
//! `/api` with the signed-in user's token, so the tenant rules are the API's own.
//!
//! # Signing in
//! A pasted token (`npanel token`), or a one-time login link (`npanel token --login-link`):
//! the `/login` page ([`crate::login`]) trades the link's code for a token, keeps it in
//! `sessionStorage` under the same keys this page reads, and sends the browser to `/`. The
//! token stays in the tab's session storage: never in the address bar, a cookie or
//! `localStorage`. Browsers cannot set headers on a WebSocket, so the upgrade of
//! `/api/events/live` carries it as `?token=` (DESIGN §3); the request span never records the
//! query string.
//!
//! # Views
//! Admins: the queue (pending against the bound, paused, pause/resume), each job type's
//! running/pending/limit with a form to change the limit, live jobs, a job's detail (bar, stage,
//! percent, MB/s, ETA, log tail, summary, cancel/retry), audit search and the accounts list.
//! Customers: their jobs and the same detail view, which for a restore is the seed's
//! RestoreProgress. A restore's health report is the result of the `health_check` job whose
//! payload names it (`migration_id`), read from the jobs the page already has: where no such
//! job exists (a build without health checks) the page says so, without a failing request.
//!
//! # Live updates
//! One WebSocket to `/api/events/live` feeds every view. After a drop it reconnects with
//! `?since=<last seq>`, backing off to 10 s, and says "reconnecting" in the header; events
//! whose seq is not newer than the last applied are ignored, so none is applied twice. A bar
//! shows the highest percent received for the job's current attempt and never goes back,
//! except when a new attempt starts (a `status` event `running` with a higher `attempt`) or a
//! person retries the job (`status` `queued`, reason `retry requested`): the work starts over,
//! and the bar with it. Events only mark jobs dirty; the DOM is written once
//! per animation frame, and the ETA counts down locally once a second between messages.
//!
//! # Security headers
//! The page runs no inline script: its `Content-Security-Policy` allows scripts, styles and
//! connections to this origin only (`connect-src 'self'` covers `ws://`/`wss://` to it), and no
//! framing, forms or base URL elsewhere.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("dashboard/index.html");
const STYLE: &str = include_str!("dashboard/dashboard.css");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");

/// The page's Content-Security-Policy.
pub const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Bytes of the page and everything it loads (what a first visit downloads, uncompressed).
pub fn weight() -> usize {
    PAGE.len() + STYLE.len() + SCRIPT.len()
}

fn hardened(body: &'static str, content_type: &'static str, cache: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// The dashboard.
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, content_type = "text/html", body = String, description = "The web dashboard (sign in with a token)")))]
pub async fn page() -> Response {
    let mut r = hardened(PAGE, "text/html; charset=utf-8", "no-cache");
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}

/// The dashboard's script.
#[utoipa::path(get, path = "/dashboard.js", tag = "dashboard",
    responses((status = 200, content_type = "text/javascript", body = String)))]
pub async fn script() -> Response {
    hardened(SCRIPT, "text/javascript; charset=utf-8", "no-cache")
}

/// The dashboard's style.
#[utoipa::path(get, path = "/dashboard.css", tag = "dashboard",
    responses((status = 200, content_type = "text/css", body = String)))]
pub async fn style() -> Response {
    hardened(STYLE, "text/css; charset=utf-8", "no-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(PAGE.contains(r#"<script src="/dashboard.js" defer></script>"#));
        assert!(PAGE.contains(r#"<link rel="stylesheet" href="/dashboard.css">"#));
        // No inline script or style, nothing from elsewhere.
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert!(!PAGE.contains("<style"));
        assert!(!PAGE.contains(" style="));
        for asset in [PAGE, STYLE, SCRIPT] {
            assert!(!asset.contains("http://") && !asset.contains("https://"));
            assert!(!asset.contains("@import"));
        }
        assert!(!CSP.contains("unsafe"), "{CSP}");
        assert!(CSP.contains("script-src 'self'"), "{CSP}");
    }

    #[test]
    fn the_script_keeps_the_token_out_of_urls_and_storage_that_outlives_the_tab() {
        assert!(!SCRIPT.contains("localStorage"));
        assert!(!SCRIPT.contains("document.cookie"));
        // The login page's storage key: a login link lands here signed in.
        assert!(SCRIPT.contains("'npanel.token'"));
        assert!(include_str!("login/login.js").contains("'npanel.token'"));
        // The only URL holding the token is the WebSocket upgrade's.
        let in_urls: Vec<&str> = SCRIPT
            .lines()
            .filter(|l| !l.trim_start().starts_with("//") && l.contains("token="))
            .collect();
        assert_eq!(in_urls.len(), 1, "{in_urls:?}");
        assert!(in_urls[0].contains("'/api/events/live?token='"));
        assert!(
            !SCRIPT.contains("innerHTML"),
            "text only: no markup from data"
        );
    }

    #[test]
    fn the_page_weighs_under_200_kb() {
        assert!(weight() < 200 * 1024, "{} bytes", weight());
    }
}
