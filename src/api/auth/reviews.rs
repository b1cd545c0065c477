//! The create-only review resources: SelfSubjectAccessReview (`kubectl auth can-i`),
//! SelfSubjectRulesReview (`can-i --list`), SubjectAccessReview, LocalSubjectAccessReview,
//! SelfSubjectReview (`kubectl auth whoami`), TokenReview, and TokenRequest
//! (`serviceaccounts/{name}/token`, `kubectl create token`). Nothing here is stored.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::rbac::Attributes;
use crate::api::errors::{ApiError, ApiResult};
use crate::api::handlers::{decode_body, json_response, Req};
use crate::api::{objects, User};
use crate::registry;

fn user_info(u: &User) -> Value {
    json!({"username": u.name, "groups": u.groups})
}

fn attrs_from(spec: &Value) -> Attributes {
    let s = |p: &str| spec.pointer(p).and_then(|v| v.as_str()).unwrap_or("").to_string();
    match spec.get("nonResourceAttributes") {
        Some(n) if spec.get("resourceAttributes").is_none() => Attributes {
            verb: n["verb"].as_str().unwrap_or("").into(),
            path: Some(n["path"].as_str().unwrap_or("").into()),
            ..Default::default()
        },
        _ => Attributes {
            verb: s("/resourceAttributes/verb"),
            group: s("/resourceAttributes/group"),
            resource: s("/resourceAttributes/resource"),
            subresource: s("/resourceAttributes/subresource"),
            namespace: s("/resourceAttributes/namespace"),
            name: s("/resourceAttributes/name"),
            path: None,
        },
    }
}

/// Handles POST to a review resource. `user` is who asks.
pub async fn create(req: &Req, user: &User, body: &[u8]) -> ApiResult<Response> {
    let ct = req.headers.get("content-type").and_then(|c| c.to_str().ok()).unwrap_or("application/json");
    let mut obj = decode_body(ct, body)?;
    let kind: &str = &req.r.kind;
    obj["apiVersion"] = json!(req.r.api_version());
    obj["kind"] = json!(kind);
    if obj.get("metadata").is_none() {
        obj["metadata"] = json!({});
    }
    let st = &req.st;
    match kind {
        "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let spec = obj.get("spec").cloned().unwrap_or(json!({}));
            let subject = if kind == "SelfSubjectAccessReview" {
                user.clone()
            } else {
                User {
                    name: spec["user"].as_str().unwrap_or("").to_string(),
                    groups: spec["groups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|g| g.as_str().map(String::from))
                        .collect(),
                }
            };
            let mut a = attrs_from(&spec);
            if kind == "LocalSubjectAccessReview" {
                a.namespace = req.ns.clone().unwrap_or_default();
            }
            let allowed = st.authz.authorize(st.store.as_ref(), &subject, &a).await.is_ok();
            obj["status"] =
                if allowed { json!({"allowed": true, "reason": "allowed by RBAC"}) } else { json!({"allowed": false}) };
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        "SelfSubjectRulesReview" => {
            let ns = obj.pointer("/spec/namespace").and_then(|n| n.as_str()).unwrap_or("").to_string();
            let policy = st.authz.policy();
            let mut resource_rules = Vec::new();
            let mut non_resource_rules = Vec::new();
            if user.groups.iter().any(|g| g == "system:masters") {
                resource_rules.push(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
                non_resource_rules.push(json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
            }
            for r in policy.rules_for(user, &ns) {
                if r.get("nonResourceURLs").is_some() {
                    non_resource_rules.push(json!({"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]}));
                } else {
                    let mut x = json!({"verbs": r["verbs"], "apiGroups": r["apiGroups"], "resources": r["resources"]});
                    if let Some(n) = r.get("resourceNames") {
                        x["resourceNames"] = n.clone();
                    }
                    resource_rules.push(x);
                }
            }
            obj["status"] =
                json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false});
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        "SelfSubjectReview" => {
            obj["status"] = json!({"userInfo": user_info(user)});
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        "TokenReview" => {
            let token = obj.pointer("/spec/token").and_then(|t| t.as_str()).unwrap_or("").to_string();
            obj["status"] = match super::authenticate_bearer(st, &token).await {
                Ok(u) => json!({"authenticated": true, "user": user_info(&u), "audiences": [super::tokens::ISSUER]}),
                Err(_) => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        other => Err(ApiError::method_not_allowed(format!("{other} cannot be created"))),
    }
}

/// `POST serviceaccounts/{name}/token`: a TokenRequest.
pub async fn token_request(req: &Req, body: &[u8]) -> ApiResult<Response> {
    let ct = req.headers.get("content-type").and_then(|c| c.to_str().ok()).unwrap_or("application/json");
    let mut tr = decode_body(ct, body)?;
    let ns = req.ns.clone().unwrap_or_default();
    let name = req.name.clone().unwrap_or_default();
    let sa = objects::get(req.st.store.as_ref(), &req.r, Some(&ns), &name).await?;
    let sa_uid = sa.obj.pointer("/metadata/uid").and_then(|u| u.as_str()).unwrap_or("").to_string();
    let ttl = tr.pointer("/spec/expirationSeconds").and_then(|e| e.as_i64()).unwrap_or(3600);
    if ttl < 600 {
        return Err(ApiError::new(422, "Invalid", format!("TokenRequest.authentication.k8s.io {name:?} is invalid: spec.expirationSeconds: Invalid value: {ttl}: may not specify a duration less than 10 minutes")));
    }
    let ttl = ttl.min(48 * 3600);
    let auds: Vec<String> = tr
        .pointer("/spec/audiences")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    let auds = if auds.is_empty() { vec![super::tokens::ISSUER.to_string()] } else { auds };
    let pod = match tr.pointer("/spec/boundObjectRef") {
        Some(b) if b["kind"] == "Pod" => {
            let pods = registry::find("", "v1", "pods").ok_or_else(|| ApiError::internal("pods not registered"))?;
            let pname = b["name"].as_str().unwrap_or("");
            let p = objects::get(req.st.store.as_ref(), pods, Some(&ns), pname).await?;
            Some((pname.to_string(), p.obj.pointer("/metadata/uid").and_then(|u| u.as_str()).unwrap_or("").to_string()))
        }
        _ => None,
    };
    let now = chrono::Utc::now().timestamp();
    let (token, exp) = req
        .st
        .sa_signer
        .issue(&ns, &name, &sa_uid, &auds, ttl, pod.as_ref().map(|(a, b)| (a.as_str(), b.as_str())), now)
        .map_err(ApiError::internal)?;
    tr["apiVersion"] = json!("authentication.k8s.io/v1");
    tr["kind"] = json!("TokenRequest");
    tr["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": null});
    tr["spec"]["audiences"] = json!(auds);
    tr["spec"]["expirationSeconds"] = json!(ttl);
    let exp_ts = chrono::DateTime::from_timestamp(exp, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    tr["status"] = json!({"token": token, "expirationTimestamp": exp_ts});
    Ok(json_response(StatusCode::CREATED, &tr))
}
