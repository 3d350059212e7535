//! The KBS over HTTP (axum): the three endpoints under `/kbs/v0`, the session cookie, errors
//! as `ErrorInformation` bodies with their status. Each request's work (an appraisal, an
//! audit-log append that waits for its fsync) runs on the blocking pool.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};

use super::{COOKIE, Kbs, KbsError, LIFETIME, MAX_BODY};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn json(status: StatusCode, body: Vec<u8>, cookie: Option<&str>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(c) = cookie
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{COOKIE}={c}; Path=/kbs; Max-Age={LIFETIME}; HttpOnly"
        ))
    {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn error(e: &KbsError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(
        status,
        serde_json::to_vec(&e.information()).unwrap_or_default(),
        None,
    )
}

/// The session cookie's value, from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
}

async fn blocking<F>(f: F) -> Response
where
    F: FnOnce() -> Response + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| error(&KbsError::Internal("the request's task failed".to_string())))
}

async fn auth(State(kbs): State<Arc<Kbs>>, body: Bytes) -> Response {
    blocking(move || match kbs.auth(&body, now()) {
        Ok((id, challenge)) => json(
            StatusCode::OK,
            serde_json::to_vec(&challenge).unwrap_or_default(),
            Some(&id),
        ),
        Err(e) => error(&e),
    })
    .await
}

async fn attest(State(kbs): State<Arc<Kbs>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(id) = cookie(&headers) else {
        return error(&KbsError::Unauthenticated(format!(
            "no {COOKIE} cookie: start at /kbs/v0/auth"
        )));
    };
    blocking(move || match kbs.attest(&id, &body, now()) {
        Ok(token) => json(
            StatusCode::OK,
            serde_json::to_vec(&serde_json::json!({ "token": token })).unwrap_or_default(),
            Some(&id),
        ),
        Err(e) => error(&e),
    })
    .await
}

async fn resource(
    State(kbs): State<Arc<Kbs>>,
    headers: HeaderMap,
    Path((repository, kind, tag)): Path<(String, String, String)>,
) -> Response {
    let Some(id) = cookie(&headers) else {
        return error(&KbsError::Unauthenticated(format!(
            "no {COOKIE} cookie: start at /kbs/v0/auth"
        )));
    };
    blocking(
        move || match kbs.resource(&id, &repository, &kind, &tag, now()) {
            Ok(jwe) => json(
                StatusCode::OK,
                serde_json::to_vec(&jwe).unwrap_or_default(),
                None,
            ),
            Err(e) => error(&e),
        },
    )
    .await
}

/// The KBS's routes. A session name with `/` in it goes in the path as `%2F`.
pub fn router(kbs: Arc<Kbs>) -> Router {
    Router::new()
        .route("/kbs/v0/auth", post(auth))
        .route("/kbs/v0/attest", post(attest))
        .route("/kbs/v0/resource/{repository}/{kind}/{tag}", get(resource))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(kbs)
}
