//! One error type for the whole server, mapped exhaustively to HTTP status codes and gRPC codes so
//! that a new variant cannot be forgotten by either transport.
//!
//! Errors in this crate follow one rule: an error's `Display` says what went wrong at its own level
//! and its cause is its `source()`, never both. [`chain`] (or [`Chain`] in a log field) joins an
//! error and its causes, outermost first, with ": "; that is what logs, error answers and the
//! command line show.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is malformed or a value is out of range; the message says what is accepted.
    #[error("{0}")]
    InvalidRequest(String),
    /// The body is not an image format the server decodes.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Body, image or message larger than the configured limits.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    ModelNotFound(String),
    /// No route at this path.
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request target (path and query) is over the limit.
    #[error("{0}")]
    UriTooLong(String),
    /// The bounded queue is full; retry after the given number of seconds.
    #[error(
        "queue full for model {model}: {depth} requests waiting; retry after {retry_after_s} s"
    )]
    Overloaded {
        model: String,
        depth: usize,
        retry_after_s: u64,
    },
    /// Shed under adaptive α: the request waited in the queue past the objective's budget.
    #[error("{0}")]
    Shed(String),
    /// The request's deadline passed before it finished.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The server is starting up or draining.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    /// The change conflicts with how the server is configured (e.g. exit policies managed by a file).
    #[error("{0}")]
    Conflict(String),
    /// A failure inside ONNX Runtime or the engine: what failed, and the cause when there is one
    /// (an `ort::Error`, an I/O error, …), kept for the logs and added to the answer's message.
    #[error("internal error: {message}")]
    Internal {
        message: String,
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
}

/// `e` and its causes, outermost first, joined by ": ".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    Chain(e).to_string()
}

/// Displays an error and its causes, outermost first, joined by ": " (for log fields:
/// `error = %Chain(&e)`).
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl Error {
    /// A malformed request; `msg` says what is wrong and what is accepted.
    pub fn invalid(msg: impl std::fmt::Display) -> Self {
        Error::InvalidRequest(msg.to_string())
    }

    /// An internal failure described by `msg` alone.
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Error::Internal {
            message: msg.to_string(),
            source: None,
        }
    }

    /// An internal failure: what failed (`what`) and why (`source`, kept as the cause).
    pub fn internal_from(
        what: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Internal {
            message: what.to_string(),
            source: Some(Arc::new(source)),
        }
    }

    /// The message an answer carries: this error and its causes (see [`chain`]).
    pub fn message(&self) -> String {
        chain(self)
    }

    /// A short, stable machine-readable code for the JSON body and the metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::TooLarge(_) => "too_large",
            Error::ModelNotFound(_) => "model_not_found",
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::UriTooLong(_) => "uri_too_long",
            Error::Overloaded { .. } | Error::Shed(_) => "overloaded",
            Error::DeadlineExceeded(_) => "deadline_exceeded",
            Error::Unavailable(_) => "unavailable",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Forbidden(_) => "forbidden",
            Error::Conflict(_) => "conflict",
            Error::Internal { .. } => "internal",
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            Error::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::ModelNotFound(_) | Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Error::Overloaded { .. } | Error::Shed(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Error::InvalidRequest(_) => tonic::Code::InvalidArgument,
            Error::UnsupportedMediaType(_) => tonic::Code::InvalidArgument,
            Error::TooLarge(_) => tonic::Code::ResourceExhausted,
            Error::ModelNotFound(_) | Error::NotFound(_) => tonic::Code::NotFound,
            Error::MethodNotAllowed(_) => tonic::Code::Unimplemented,
            Error::UriTooLong(_) => tonic::Code::InvalidArgument,
            Error::Overloaded { .. } | Error::Shed(_) => tonic::Code::ResourceExhausted,
            Error::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
            Error::Unavailable(_) => tonic::Code::Unavailable,
            Error::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Error::Forbidden(_) => tonic::Code::PermissionDenied,
            Error::Conflict(_) => tonic::Code::FailedPrecondition,
            Error::Internal { .. } => tonic::Code::Internal,
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::Overloaded { retry_after_s, .. } => Some(*retry_after_s),
            Error::Shed(_) => Some(1),
            _ => None,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let mut status = tonic::Status::new(e.grpc_code(), e.message());
        if let Some(s) = e.retry_after() {
            if let Ok(v) = s.to_string().parse() {
                status.metadata_mut().insert("retry-after", v);
            }
        }
        status
    }
}

/// Every error answer: what was wrong and what is accepted, and a stable machine-readable code.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub code: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.http_status();
        let mut resp = (
            status,
            Json(ErrorBody {
                error: self.message(),
                code: self.code().to_string(),
            }),
        )
            .into_response();
        if let Some(s) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}")]
    struct ReadError {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    fn not_found() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
    }

    #[test]
    fn the_chain_joins_every_cause_outermost_first() {
        let e = ReadError {
            path: "a.json",
            source: not_found(),
        };
        assert_eq!(e.to_string(), "cannot read a.json");
        assert_eq!(chain(&e), "cannot read a.json: no such file");
        assert_eq!(Chain(&e).to_string(), chain(&e));
    }

    #[test]
    fn an_internal_error_keeps_its_cause_and_answers_with_the_whole_chain() {
        let e = Error::internal_from("onnxruntime run", not_found());
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.to_string(), "internal error: onnxruntime run");
        assert_eq!(e.message(), "internal error: onnxruntime run: no such file");
        assert_eq!(
            tonic::Status::from(e.clone()).message(),
            "internal error: onnxruntime run: no such file"
        );
        assert_eq!(e.http_status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.code(), "internal");
        // Without a cause the message is the text alone, as before.
        let plain = Error::internal("the engine dropped the request");
        assert!(std::error::Error::source(&plain).is_none());
        assert_eq!(
            plain.message(),
            "internal error: the engine dropped the request"
        );
        assert_eq!(
            Error::invalid("alpha 2 is out of range").message(),
            "alpha 2 is out of range"
        );
    }
}
