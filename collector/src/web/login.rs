//! Who is asking: the viewer's token (an `authorization: Bearer` header or the login cookie),
//! the login form, and the checks every page and API route makes.
//!
//! `GET /login` shows a form; `POST /login` (form field `token`) checks the token and keeps
//! it in an `HttpOnly; SameSite=Strict` cookie ([`COOKIE`]; `Secure` over TLS), then sends the
//! browser back to the page it came from (a relative path of this site only). `POST /logout`
//! clears the cookie. Both POSTs are refused when the browser says they come from another
//! site (`Sec-Fetch-Site`, `Origin`), on top of the cookie's `SameSite=Strict`.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::server::AppState;
use crate::auth::{self, Caller, Denied, Right};

/// The cookie that holds the viewer's token.
pub const COOKIE: &str = "logdog_token";

/// Largest login form accepted.
const MAX_FORM: usize = 8 * 1024;
/// Longest `next` path kept.
const MAX_NEXT: usize = 2048;

/// The request's token: `authorization: Bearer TOKEN`, else the login cookie.
pub(super) fn token(headers: &HeaderMap) -> Option<&str> {
    auth::bearer(headers).or_else(|| cookie(headers))
}

/// The login cookie's value, if any.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The caller of a request that must be authenticated; a refusal is counted and logged.
pub(super) fn caller(st: &AppState, headers: &HeaderMap, what: &str) -> Result<Caller, Denied> {
    st.auth
        .caller(token(headers))
        .map_err(|d| st.auth.refuse(d, what))
}

/// The caller of a request that reads `project`; a refusal is counted and logged.
pub(super) fn reader(
    st: &AppState,
    headers: &HeaderMap,
    project: &str,
    what: &str,
) -> Result<Caller, Denied> {
    st.auth.check(token(headers), Right::Read, project, what)
}

/// A page (`html`) for a browser: without a usable token, a redirect to the login form (303);
/// with a token that may not read `project`, the form with the refusal (403).
pub(super) fn guarded_page(
    st: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    project: Option<&str>,
    html: &'static str,
) -> Response {
    let what = format!("viewer {}", uri.path());
    let checked = match project {
        Some(p) => reader(st, headers, p, &what),
        None => caller(st, headers, &what),
    };
    let next = uri.path_and_query().map_or("/", |p| p.as_str());
    match checked {
        Ok(_) => super::server::page(html, !st.auth.is_open()),
        Err(Denied::Unauthenticated(_)) => {
            let target = format!("/login?next={}", encode(safe_next(next)));
            let mut resp = StatusCode::SEE_OTHER.into_response();
            if let Ok(v) = HeaderValue::from_str(&target) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            no_store(resp)
        }
        Err(Denied::PermissionDenied(m)) => form(StatusCode::FORBIDDEN, &m, safe_next(next)),
    }
}

/// `/login` options.
#[derive(Debug, Deserialize)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

/// `GET /login?next=PATH`: the form.
pub(super) async fn login_form(
    State(st): State<AppState>,
    Query(q): Query<LoginQuery>,
) -> Response {
    let msg = if st.auth.is_open() {
        "This collector needs no token: everyone may read every project."
    } else {
        ""
    };
    form(
        StatusCode::OK,
        msg,
        safe_next(q.next.as_deref().unwrap_or("/")),
    )
}

/// `POST /login`: checks the token, keeps it in the cookie and goes back to `next`.
pub(super) async fn login(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    if let Err(m) = same_site(&st, &headers, &uri) {
        return cross_site("viewer login", &m);
    }
    if body.len() > MAX_FORM {
        return form(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large", "/");
    }
    let (mut token, mut next) = (String::new(), String::from("/"));
    for (k, v) in form_urlencoded::parse(&body) {
        match &*k {
            "token" => token = v.trim().to_string(),
            "next" => next = v.into_owned(),
            _ => {}
        }
    }
    let next = safe_next(&next);
    if token.is_empty() {
        return form(StatusCode::UNAUTHORIZED, "enter a token", next);
    }
    let caller = match st.auth.caller(Some(&token)) {
        Ok(c) => c,
        Err(d) => {
            let d = st.auth.refuse(d, "viewer login");
            return form(StatusCode::UNAUTHORIZED, &d.to_string(), next);
        }
    };
    // A known token is one `token new` made; anything else would not survive in a cookie.
    let Some(set) = token
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'))
        .then(|| cookie_header(&st, &token, false))
        .flatten()
    else {
        return form(
            StatusCode::BAD_REQUEST,
            "this token cannot be kept in a cookie (send it as `authorization: Bearer`)",
            next,
        );
    };
    tracing::info!(token = caller.name(), "viewer login");
    redirect(next, set)
}

/// `POST /logout`: clears the cookie and shows the form.
pub(super) async fn logout(State(st): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(m) = same_site(&st, &headers, &uri) {
        return cross_site("viewer logout", &m);
    }
    match cookie_header(&st, "", true) {
        Some(set) => redirect("/login", set),
        None => form(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot clear the cookie",
            "/",
        ),
    }
}

/// A cross-site POST: refused with 403, logged.
fn cross_site(what: &str, msg: &str) -> Response {
    tracing::warn!(request = what, reason = %msg, "request refused: cross-site form");
    form(StatusCode::FORBIDDEN, msg, "/")
}

/// Whether a form POST comes from this site: `Sec-Fetch-Site` and `Origin` are checked when
/// the browser sends them.
fn same_site(st: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<(), String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if !matches!(site, "same-origin" | "none") {
            return Err(format!("cross-site form refused (Sec-Fetch-Site: {site})"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        let scheme = if st.secure { "https" } else { "http" };
        if host.is_empty() || !origin.eq_ignore_ascii_case(&format!("{scheme}://{host}")) {
            return Err("cross-site form refused (Origin is not this site)".to_string());
        }
    }
    Ok(())
}

/// The `Set-Cookie` header keeping `token` (or, `clear`: removing the cookie).
fn cookie_header(st: &AppState, token: &str, clear: bool) -> Option<HeaderValue> {
    let mut v = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    if clear {
        v.push_str("; Max-Age=0");
    }
    if st.secure {
        v.push_str("; Secure");
    }
    HeaderValue::from_str(&v).ok()
}

/// A 303 to `to`, setting `cookie`.
fn redirect(to: &str, cookie: HeaderValue) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    h.insert(header::SET_COOKIE, cookie);
    if let Ok(v) = HeaderValue::from_str(to) {
        h.insert(header::LOCATION, v);
    }
    no_store(resp)
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `next` if it is a path of this site, else `/`: never another site (`//host`, `/\host`,
/// `https://…`), never a control character.
pub(super) fn safe_next(next: &str) -> &str {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.len() <= MAX_NEXT
        && next.bytes().all(|b| b.is_ascii_graphic());
    if ok { next } else { "/" }
}

/// Percent-encodes `s` for a query value.
fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Escapes text for HTML (element text and quoted attributes).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const LOGIN_HTML: &str = include_str!("assets/login.html");

/// The login form with `message` (none if empty), going back to `next` afterwards.
fn form(status: StatusCode, message: &str, next: &str) -> Response {
    let message = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\" id=\"error\">{}</p>", escape(message))
    };
    let html = LOGIN_HTML
        .replace("{{message}}", &message)
        .replace("{{next}}", &escape(next));
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    no_store(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next("/s/p/x/+/a?x=1"), "/s/p/x/+/a?x=1");
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "evil",
            "",
            "/a b",
            "/a\nb",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; logdog_token=ldt_x; b=2"),
        );
        assert_eq!(token(&h), Some("ldt_x"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer ldt_y"),
        );
        assert_eq!(token(&h), Some("ldt_y"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("logdog_token_x=1"));
        assert_eq!(token(&h), None);
    }

    #[test]
    fn form_escapes() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
