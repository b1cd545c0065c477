//! The Kubernetes API server: axum over rustls.
