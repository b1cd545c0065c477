//! OpenAPI v2 and v3 documents for every served kind (filled in next).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use super::ApiState;

pub async fn v2(State(_st): State<Arc<ApiState>>) -> Response {
    (StatusCode::NOT_FOUND, "not yet").into_response()
}

pub async fn v3_index(State(_st): State<Arc<ApiState>>) -> Response {
    (StatusCode::NOT_FOUND, "not yet").into_response()
}

pub async fn v3_group(State(_st): State<Arc<ApiState>>, Path(_p): Path<String>) -> Response {
    (StatusCode::NOT_FOUND, "not yet").into_response()
}
