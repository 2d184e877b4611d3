//! Errors of the HTTP API and their status codes.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use spindle_query::QueryError;

/// An error answer: a status and a message saying what was wrong.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let status = match &e {
            QueryError::BadRequest(_) => StatusCode::BAD_REQUEST,
            QueryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            QueryError::ResourcesExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            QueryError::ResultTooLarge(_) => StatusCode::UNPROCESSABLE_ENTITY,
            QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self { status, message: e.to_string() }
    }
}

impl ApiError {
    /// An answer with this error's status and `body` (of `content_type`), and `Retry-After`
    /// when retrying is worth it (429, 503).
    pub fn response_with(&self, content_type: &'static str, body: Vec<u8>) -> Response {
        let mut response = (self.status, [(header::CONTENT_TYPE, content_type)], body).into_response();
        if matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.response_with("text/plain; charset=utf-8", format!("{}\n", self.message).into_bytes())
    }
}
