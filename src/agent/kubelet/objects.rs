//! The API objects a pod refers to — ConfigMaps and Secrets named by `env`, `envFrom` and
//! volumes, and the projected service-account token — gathered before each sync so that env
//! resolution and volume contents stay pure functions over [`PodObjects`].
//!
//! Upstream the kubelet reads these through its configmap/secret managers (watch- or
//! TTL-cache-based) and the token manager; here a sync re-reads the few objects a pod names,
//! which also keeps mounted configMap/secret volumes up to date (they are rewritten when the
//! content changes, see `volumes`).

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

/// What a sync knows about the objects its pod names. A name mapped to `None` was not found
/// (404); a name missing from the map could not be read (API error) and counts as not found
/// for the current attempt.
#[derive(Debug, Clone, Default)]
pub struct PodObjects {
    pub config_maps: HashMap<String, Option<ConfigMap>>,
    pub secrets: HashMap<String, Option<Secret>>,
    /// Service-account tokens by (audience, expirationSeconds).
    pub tokens: HashMap<(String, i64), Token>,
    /// persistentVolumeClaim volumes: each claim (by name) and its bound volume.
    pub claims: HashMap<String, super::volumes::Claim>,
}

/// A bound service-account token (TokenRequest status).
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub token: String,
    pub issued: SystemTime,
    pub expires: SystemTime,
}

impl Token {
    /// Upstream token manager `requiresRefresh`: refresh once 80% of the lifetime has passed
    /// (or after 24 h, whichever comes first).
    pub fn needs_refresh(&self, now: SystemTime) -> bool {
        let life = self.expires.duration_since(self.issued).unwrap_or_default();
        let age = now.duration_since(self.issued).unwrap_or_default();
        age >= life.mul_f64(0.8) || age >= Duration::from_secs(24 * 3600)
    }
}

/// The ConfigMap and Secret names a pod refers to (env, envFrom, configMap/secret/projected
/// volumes), and whether it needs service-account tokens (audience, expirationSeconds).
pub fn references(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<(String, i64)>) {
    let (mut cms, mut secrets, mut tokens) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let Some(spec) = pod.spec.as_ref() else { return (cms, secrets, tokens) };
    let all = spec.init_containers.iter().flatten().chain(spec.containers.iter());
    for c in all {
        for e in c.env.iter().flatten() {
            if let Some(f) = &e.value_from {
                if let Some(r) = &f.config_map_key_ref {
                    cms.insert(r.name.clone());
                }
                if let Some(r) = &f.secret_key_ref {
                    secrets.insert(r.name.clone());
                }
            }
        }
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &e.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            cms.insert(c.name.clone());
        }
        if let Some(s) = &v.secret {
            secrets.insert(s.secret_name.clone().unwrap_or_default());
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &p.config_map {
                cms.insert(c.name.clone());
            }
            if let Some(s) = &p.secret {
                secrets.insert(s.name.clone());
            }
            if let Some(t) = &p.service_account_token {
                tokens.insert((t.audience.clone().unwrap_or_default(), t.expiration_seconds.unwrap_or(3600)));
            }
        }
    }
    cms.remove("");
    secrets.remove("");
    (cms, secrets, tokens)
}

async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads what `pod` refers to. Tokens in `previous` are kept until they need a refresh
/// (upstream token manager cache). API errors are logged and leave the name out.
pub async fn fetch(client: &kube::Client, pod: &Pod, previous: &PodObjects, now: SystemTime) -> PodObjects {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let (cms, secrets, tokens) = references(pod);
    let mut out = PodObjects::default();
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for name in cms {
        match get_opt(&cm_api, &name).await {
            Ok(o) => {
                out.config_maps.insert(name, o);
            }
            Err(e) => tracing::warn!(namespace = %ns, configmap = %name, error = %e, "reading ConfigMap failed"),
        }
    }
    let s_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for name in secrets {
        match get_opt(&s_api, &name).await {
            Ok(o) => {
                out.secrets.insert(name, o);
            }
            Err(e) => tracing::warn!(namespace = %ns, secret = %name, error = %e, "reading Secret failed"),
        }
    }
    out.claims = super::volumes::fetch_claims(client, pod, &ns).await;
    for key in tokens {
        if let Some(t) = previous.tokens.get(&key).filter(|t| !t.needs_refresh(now)) {
            out.tokens.insert(key, t.clone());
            continue;
        }
        match request_token(client, pod, &ns, &key.0, key.1, now).await {
            Ok(t) => {
                out.tokens.insert(key, t);
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, pod = ?pod.metadata.name, error = %e, "requesting a service account token failed");
                // Keep serving the old token while it is still valid.
                if let Some(t) = previous.tokens.get(&key).filter(|t| t.expires > now) {
                    out.tokens.insert(key, t.clone());
                }
            }
        }
    }
    out
}

/// `POST serviceaccounts/<sa>/token` bound to the pod, as the kubelet's token manager asks.
async fn request_token(
    client: &kube::Client,
    pod: &Pod,
    ns: &str,
    audience: &str,
    expiration: i64,
    now: SystemTime,
) -> Result<Token, String> {
    let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            // An empty audience list means the API server's own audiences.
            audiences: if audience.is_empty() { vec![] } else { vec![audience.to_string()] },
            expiration_seconds: Some(expiration),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let resp: TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &req)
        .await
        .map_err(|e| format!("TokenRequest for serviceaccount {ns}/{sa}: {e}"))?;
    let status = resp.status.ok_or("TokenRequest answered without a status")?;
    let expires = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(status.expiration_timestamp.0.as_second()).unwrap_or(0));
    Ok(Token { token: status.token, issued: now, expires })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_cover_env_env_from_and_volumes() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {
                "containers": [{"name": "c",
                    "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm1", "key": "k"}}},
                            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}],
                    "envFrom": [{"configMapRef": {"name": "cm2"}}, {"secretRef": {"name": "s2"}}]}],
                "volumes": [
                    {"name": "v1", "configMap": {"name": "cm3"}},
                    {"name": "v2", "secret": {"secretName": "s3"}},
                    {"name": "v3", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                        {"configMap": {"name": "kube-root-ca.crt"}}]}}]
            }
        }))
        .unwrap();
        let (cms, secrets, tokens) = references(&pod);
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), vec!["cm1", "cm2", "cm3", "kube-root-ca.crt"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), vec!["s1", "s2", "s3"]);
        assert_eq!(tokens.into_iter().collect::<Vec<_>>(), vec![(String::new(), 3607)]);
    }

    #[test]
    fn a_token_is_refreshed_after_80_percent_of_its_life() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = Token { token: "x".into(), issued: t0, expires: t0 + Duration::from_secs(1000) };
        assert!(!t.needs_refresh(t0 + Duration::from_secs(799)));
        assert!(t.needs_refresh(t0 + Duration::from_secs(800)));
    }
}
