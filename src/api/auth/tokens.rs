//! Service-account tokens: ES256 JWTs signed with the cluster's service-account key, in the
//! shape kube-apiserver issues for TokenRequest (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`,
//! `jti`, and the `kubernetes.io` claim naming the namespace, service account and bound pod).

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::{json, Value};

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub struct Signer {
    key: EcdsaKeyPair,
    public: Vec<u8>,
    key_id: String,
}

/// What a valid token says about its bearer.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    pub audiences: Vec<String>,
    pub expires: i64,
    pub raw: Value,
}

impl Signer {
    /// From the PKCS#8 PEM the PKI stores.
    pub fn from_pem(pem: &str) -> Result<Signer, String> {
        let der = rustls_pemfile::private_key(&mut pem.as_bytes())
            .map_err(|e| e.to_string())?
            .ok_or("no private key in the service-account key file")?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_der(), &SystemRandom::new())
            .map_err(|e| format!("service-account key is not an ECDSA P-256 key: {e}"))?;
        let public = key.public_key().as_ref().to_vec();
        let key_id = {
            use sha2::Digest;
            B64.encode(sha2::Sha256::digest(&public))
        };
        Ok(Signer { key, public, key_id })
    }

    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = json!({"alg": "ES256", "kid": self.key_id});
        let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let sig = self.key.sign(&SystemRandom::new(), input.as_bytes()).map_err(|_| "signing failed")?;
        Ok(format!("{input}.{}", B64.encode(sig.as_ref())))
    }

    /// Issues a token for a service account, optionally bound to a pod.
    pub fn issue(
        &self,
        ns: &str,
        sa: &str,
        sa_uid: &str,
        audiences: &[String],
        ttl_seconds: i64,
        pod: Option<(&str, &str)>,
        now: i64,
    ) -> Result<(String, i64), String> {
        let exp = now + ttl_seconds;
        let mut k8s = json!({"namespace": ns, "serviceaccount": {"name": sa, "uid": sa_uid}});
        if let Some((name, uid)) = pod {
            k8s["pod"] = json!({"name": name, "uid": uid});
        }
        let claims = json!({
            "aud": audiences, "exp": exp, "iat": now, "nbf": now, "iss": ISSUER,
            "jti": uuid::Uuid::new_v4().to_string(),
            "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "kubernetes.io": k8s,
        });
        Ok((self.sign(&claims)?, exp))
    }

    /// Verifies signature, issuer and expiry. (That the service account still exists is the
    /// caller's check.)
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, String> {
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err("not a JWT".into());
        }
        let sig = B64.decode(parts[2]).map_err(|_| "bad signature encoding")?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .map_err(|_| "invalid signature")?;
        let claims: Value = serde_json::from_slice(&B64.decode(parts[1]).map_err(|_| "bad claims encoding")?)
            .map_err(|_| "bad claims")?;
        if claims["iss"] != ISSUER {
            return Err("wrong issuer".into());
        }
        let exp = claims["exp"].as_i64().unwrap_or(0);
        if exp <= now || claims["nbf"].as_i64().unwrap_or(0) > now + 60 {
            return Err("token expired or not yet valid".into());
        }
        let k8s = &claims["kubernetes.io"];
        Ok(Claims {
            namespace: k8s["namespace"].as_str().unwrap_or("").to_string(),
            service_account: k8s.pointer("/serviceaccount/name").and_then(|v| v.as_str()).unwrap_or("").to_string(),
            service_account_uid: k8s.pointer("/serviceaccount/uid").and_then(|v| v.as_str()).unwrap_or("").to_string(),
            audiences: claims["aud"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(String::from))
                .collect(),
            expires: exp,
            raw: claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::from_pem(&rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap()
    }

    #[test]
    fn issued_tokens_verify_and_name_their_account() {
        let s = signer();
        let (t, exp) = s.issue("ns1", "robot", "uid-1", &[ISSUER.to_string()], 3600, None, 1000).unwrap();
        assert_eq!(exp, 4600);
        let c = s.verify(&t, 1001).unwrap();
        assert_eq!(
            (c.namespace.as_str(), c.service_account.as_str(), c.service_account_uid.as_str()),
            ("ns1", "robot", "uid-1")
        );
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_are_rejected() {
        let s = signer();
        let (t, _) = s.issue("ns1", "robot", "u", &[], 10, None, 1000).unwrap();
        assert!(s.verify(&t, 2000).is_err());
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        parts[1] = B64.encode(r#"{"iss":"https://kubernetes.default.svc.cluster.local","exp":99999999999,"kubernetes.io":{"namespace":"kube-system"}}"#);
        assert!(s.verify(&parts.join("."), 1001).is_err());
        assert!(signer().verify(&t, 1001).is_err());
        assert!(s.verify("garbage", 1001).is_err());
    }
}
