//! The host channel: the management node's HTTPS port for its hosts (`management.hostTls.port`,
//! 8443). The TLS handshake takes only certificates the cloud's CA signed for a host and did not
//! revoke; every request then must come with the certificate of a host this node has (its serial
//! in a host row), so a certificate of a host removed from the DB is refused even before its
//! revocation reached every list. Agents download images here.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rusqlite::OptionalExtension;

use crate::error::ApiError;
use crate::Node;

/// The routes of the host channel.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/images/:uuid/download", get(download_image))
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            require_known_host,
        ))
        .with_state(node)
}

/// Refuses a caller whose certificate is not the one of a host in the DB.
async fn require_known_host(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let serial = req
        .extensions()
        .get::<zstack_http::PeerCertificate>()
        .and_then(|c| zstack_pki::identity_of(&c.0).ok())
        .map(|id| id.serial);
    let Some(serial) = serial else {
        return not_a_host("no host certificate was presented").into_response();
    };
    let lookup = {
        let node = node.clone();
        let serial = serial.clone();
        tokio::task::spawn_blocking(move || -> Result<Option<String>, ApiError> {
            let conn = node.reader()?;
            Ok(conn
                .query_row(
                    "SELECT uuid FROM host WHERE certificate_serial = ?1",
                    [&serial],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    };
    match lookup {
        Ok(Ok(Some(_))) => next.run(req).await,
        Ok(Ok(None)) => not_a_host(&format!(
            "the certificate {serial} is not the certificate of a host of this cloud"
        ))
        .into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

fn not_a_host(why: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "NOT_A_HOST_OF_THIS_CLOUD",
        format!("{why}; only hosts added to this cloud may use this port"),
    )
}

/// `GET /v1/images/<uuid>/download`: an image's file, streamed from the backup storage.
async fn download_image(State(node): State<Arc<Node>>, UrlPath(uuid): UrlPath<String>) -> Response {
    let lookup = {
        let node = node.clone();
        let uuid = uuid.clone();
        tokio::task::spawn_blocking(move || -> Result<(String, i64), ApiError> {
            use rusqlite::OptionalExtension;
            let conn = node.reader()?;
            let row: Option<(Option<String>, String, i64)> = conn
                .query_row(
                    "SELECT install_path, status, actual_size FROM image WHERE uuid = ?1",
                    [&uuid],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            match row {
                Some((Some(p), s, size)) if s == "Ready" => Ok((p, size)),
                Some((_, s, _)) => Err(ApiError::wrong_state(format!("image {uuid} is {s}"))),
                None => Err(ApiError::not_found("Image", &uuid)),
            }
        })
        .await
    };
    let (path, size) = match lookup {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => return ApiError::internal(e.to_string()).into_response(),
    };
    match tokio::fs::File::open(&path).await {
        Ok(f) => {
            let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
                f,
                1 << 20,
            ));
            (
                [
                    (
                        axum::http::header::CONTENT_TYPE,
                        "application/octet-stream".to_string(),
                    ),
                    (axum::http::header::CONTENT_LENGTH, size.to_string()),
                ],
                body,
            )
                .into_response()
        }
        Err(e) => {
            ApiError::internal(format!("cannot read image {uuid} at {path}: {e}")).into_response()
        }
    }
}
