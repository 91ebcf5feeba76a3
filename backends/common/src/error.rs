//! The error type every handler returns, and JSON extractors that report
//! malformed input in the same shape.
//!
//! Body: `{"error": {"code": "...", "message": "..."}}`. 5xx bodies are
//! generic; the underlying cause is only logged, so a database message or a
//! file path never reaches a client.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

/// A failed request, mapped to a status and a stable `code`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// 401; `code` distinguishes e.g. `invalid_token` from `invalid_credentials`.
    #[error("{message}")]
    Unauthorized {
        code: &'static str,
        message: &'static str,
    },
    #[error("forbidden")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    /// 422: well-formed JSON whose values break a rule.
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 429 with `Retry-After` (whole seconds, rounded up).
    #[error("{message}")]
    RateLimited {
        retry_after: std::time::Duration,
        message: &'static str,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl ApiError {
    /// The 401 for a missing, malformed, expired or revoked bearer token.
    pub fn invalid_token() -> Self {
        ApiError::Unauthorized {
            code: "invalid_token",
            message: "missing or invalid access token",
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) | ApiError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized { code, .. } => code,
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::Validation(_) => "validation_failed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) => "service_unavailable",
            ApiError::Internal(_) | ApiError::Database(_) => "internal_error",
        }
    }

    fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) | ApiError::Database(_) => "internal server error".into(),
            ApiError::Forbidden => "you are not allowed to do this".into(),
            ApiError::NotFound => "not found".into(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = json!({"error": {"code": self.code(), "message": self.public_message()}});
        let retry_after = match &self {
            ApiError::RateLimited { retry_after, .. } => {
                Some((retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1))
            }
            _ => None,
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        resp
    }
}

/// The JSON 404 for unknown paths.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// The JSON 405 for known paths with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// `axum::Json` whose rejections are [`ApiError`]s (400 for broken JSON,
/// 422 for wrong fields or types, 413 for oversized bodies).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(e) => ApiError::Validation(e.body_text()),
                JsonRejection::JsonSyntaxError(_) => {
                    ApiError::BadRequest("request body is not valid JSON".into())
                }
                JsonRejection::MissingJsonContentType(_) => {
                    ApiError::BadRequest("expected Content-Type: application/json".into())
                }
                JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::PayloadTooLarge("request body too large".into())
                }
                other => ApiError::BadRequest(other.body_text()),
            }),
        }
    }
}

/// `axum::extract::Query` whose rejection is a JSON 400.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::BadRequest(e.body_text()))
    }
}
