//! Authorization of HTTP routes: a middleware that refuses requests without the right key and
//! rewrites `X-Scope-OrgID` to the tenants the request may act for, so handlers read one
//! trusted header.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::{Access, Auth, AuthError};

/// Name of the tenant header.
pub const TENANT_HEADER: &str = "x-scope-orgid";

/// The text of header `name`, or 400 when it is not text.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, AuthError> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| AuthError::BadRequest(format!("{name} is not valid text"))))
        .transpose()
}

/// The tenants an HTTP request acts for.
pub fn authorize_headers(
    auth: &Auth,
    headers: &HeaderMap,
    access: Access,
) -> Result<Vec<spindle_types::TenantId>, AuthError> {
    auth.authorize(header_text(headers, "authorization")?, header_text(headers, TENANT_HEADER)?, access)
}

/// The HTTP answer for a refusal.
pub fn refusal(e: &AuthError) -> Response {
    let status = match e {
        AuthError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
        AuthError::BadRequest(_) => StatusCode::BAD_REQUEST,
        AuthError::KeysFile { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response =
        (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{e}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

async fn check(State((auth, access)): State<(Arc<Auth>, Access)>, mut request: Request, next: Next) -> Response {
    match authorize_headers(&auth, request.headers(), access) {
        Ok(tenants) => {
            let headers = request.headers_mut();
            headers.remove("authorization");
            // Without keys and without the header, leave it absent: handlers then use the
            // default tenant, or a scraper's `?tenant=`.
            let named = headers.remove(TENANT_HEADER).is_some();
            if !tenants.is_empty() && (named || auth.requires_keys()) {
                let value = tenants.iter().map(|t| t.as_str()).collect::<Vec<_>>().join("|");
                // Tenant ids are validated ASCII, so this always succeeds.
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(TENANT_HEADER, v);
                }
            }
            next.run(request).await
        }
        Err(e) => refusal(&e),
    }
}

/// `router` with every request authorized for `access` first.
pub fn protect(router: Router, auth: Arc<Auth>, access: Access) -> Router {
    router.layer(axum::middleware::from_fn_with_state((auth, access), check))
}
