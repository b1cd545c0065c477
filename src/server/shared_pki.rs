//! Servers that share an external etcd (`--datastore-endpoint`) share one cluster PKI through it,
//! as k3s keeps its bootstrap data in the datastore: the first server to start stores its CAs'
//! certificates and keys and the service-account key under `/skiff/bootstrap/<token id>`,
//! encrypted with a key derived from the join token (PBKDF2-HMAC-SHA256, then AES-256-GCM), and
//! every other server started with the same `--token` writes those files into its own
//! `<data-dir>/server/tls/` before it loads its PKI. Whoever can read the etcd but lacks the
//! token cannot read the keys; a server with another token finds nothing and says so.
//!
//! (The embedded store needs none of this: a joiner receives the files from the server it joins.)

use crate::store::{txn, OpResponse, RangeRequest, Store};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const PREFIX: &str = "/skiff/bootstrap/";

/// The files of `<data-dir>/server/tls/` every server of a cluster must have alike.
pub const SHARED_FILES: [&str; 5] =
    ["server-ca.crt", "server-ca.key", "client-ca.crt", "client-ca.key", "service-account.key"];

const PBKDF2_ROUNDS: u32 = 100_000;

#[derive(Serialize, Deserialize)]
struct Sealed {
    /// Format version.
    v: u32,
    salt: String,
    nonce: String,
    /// AES-256-GCM ciphertext (with tag) of the JSON map file name → contents.
    data: String,
}

/// The datastore key for `token` (a hash: the token itself is never stored).
pub fn key_for(token: &str) -> String {
    use sha2::Digest;
    let secret = super::join::parse_token(token).0;
    let h = sha2::Sha256::digest(format!("skiff-bootstrap:{secret}").as_bytes());
    format!("{PREFIX}{}", hex::encode(&h[..12]))
}

/// Makes `tls_dir` hold the cluster's shared PKI files, taking them from the datastore when
/// another server stored them, or storing this server's (created now if missing) when none did.
/// Fails, touching nothing, when this server already has different files: it belongs to
/// another cluster.
pub async fn sync(store: &dyn Store, tls_dir: &Path, token: &str) -> anyhow::Result<()> {
    let key = key_for(token);
    let secret = super::join::parse_token(token).0;
    for _ in 0..3 {
        let (found, _) = store.get(key.as_bytes()).await.context("reading the cluster's bootstrap data")?;
        if let Some(kv) = found {
            let files = open(secret, &kv.value)?;
            return adopt(tls_dir, &files);
        }
        // Another cluster's data (another token) is there: this server's token is wrong.
        let others = store
            .range(RangeRequest { prefix: PREFIX.as_bytes().to_vec(), limit: 1, ..Default::default() })
            .await
            .context("reading the cluster's bootstrap data")?;
        if !others.kvs.is_empty() {
            bail!(
                "the datastore already holds a cluster whose servers use another token: start this server \
                 with --token set to the first server's (its <data-dir>/server/token)"
            );
        }
        // None stored: ours (creating them first) become the cluster's, unless another server
        // stores its own first; then take those.
        crate::pki::ClusterPki::load_or_create(tls_dir).context("creating the cluster PKI")?;
        let mut files = BTreeMap::new();
        for f in SHARED_FILES {
            let p = tls_dir.join(f);
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            files.insert(f.to_string(), text);
        }
        let sealed = seal(secret, &files)?;
        let r = store.txn(txn::create(key.as_bytes(), sealed, None)).await.context("storing the bootstrap data")?;
        if r.succeeded {
            tracing::info!(key = %key, "stored this server's cluster PKI in the datastore for the other servers");
            return Ok(());
        }
        if let Some(OpResponse::Get { kv: Some(kv) }) = r.responses.first() {
            let files = open(secret, &kv.value)?;
            return adopt(tls_dir, &files);
        }
    }
    bail!("the cluster's bootstrap data at {key} kept changing; try again")
}

/// Writes the shared files into `tls_dir`; those already there must be identical.
fn adopt(tls_dir: &Path, files: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for f in SHARED_FILES {
        let Some(want) = files.get(f) else { bail!("the cluster's bootstrap data lacks {f}") };
        let p = tls_dir.join(f);
        match std::fs::read_to_string(&p) {
            Ok(have) if have == *want => {}
            Ok(_) => bail!(
                "{} differs from the cluster's in the datastore: this data dir belongs to another cluster \
                 (move {} away to join this one)",
                p.display(),
                tls_dir.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push((p, want)),
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }
    if !missing.is_empty() {
        tracing::info!(dir = %tls_dir.display(), "took the cluster PKI from the datastore");
    }
    for (p, text) in missing {
        let mode = if p.extension().is_some_and(|e| e == "key") { 0o600 } else { 0o644 };
        crate::pki::write_file(&p, text.as_bytes(), mode)?;
    }
    Ok(())
}

fn derive(secret: &str, salt: &[u8]) -> [u8; 32] {
    let mut key = [0u8; 32];
    let rounds = std::num::NonZeroU32::new(PBKDF2_ROUNDS).unwrap_or(std::num::NonZeroU32::MIN);
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, secret.as_bytes(), &mut key);
    key
}

fn aead_key(secret: &str, salt: &[u8]) -> anyhow::Result<ring::aead::LessSafeKey> {
    let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &derive(secret, salt))
        .map_err(|_| anyhow::anyhow!("cannot build the bootstrap data key"))?;
    Ok(ring::aead::LessSafeKey::new(unbound))
}

fn seal(secret: &str, files: &BTreeMap<String, String>) -> anyhow::Result<Vec<u8>> {
    use rand::RngCore;
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut salt);
    rand::thread_rng().fill_bytes(&mut nonce);
    let mut data = serde_json::to_vec(files)?;
    aead_key(secret, &salt)?
        .seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(PREFIX),
            &mut data,
        )
        .map_err(|_| anyhow::anyhow!("encrypting the bootstrap data failed"))?;
    let sealed = Sealed { v: 1, salt: hex::encode(salt), nonce: hex::encode(nonce), data: hex::encode(data) };
    Ok(serde_json::to_vec(&sealed)?)
}

fn open(secret: &str, stored: &[u8]) -> anyhow::Result<BTreeMap<String, String>> {
    let bad = || anyhow::anyhow!("the cluster's bootstrap data in the datastore is damaged");
    let sealed: Sealed = serde_json::from_slice(stored).map_err(|_| bad())?;
    if sealed.v != 1 {
        bail!("the cluster's bootstrap data has format {}, which this skiff does not know", sealed.v);
    }
    let salt = hex::decode(&sealed.salt).map_err(|_| bad())?;
    let nonce: [u8; 12] = hex::decode(&sealed.nonce).ok().and_then(|n| n.try_into().ok()).ok_or_else(bad)?;
    let mut data = hex::decode(&sealed.data).map_err(|_| bad())?;
    let plain = aead_key(secret, &salt)?
        .open_in_place(ring::aead::Nonce::assume_unique_for_key(nonce), ring::aead::Aad::from(PREFIX), &mut data)
        .map_err(|_| anyhow::anyhow!("cannot decrypt the cluster's bootstrap data: is --token the first server's?"))?;
    serde_json::from_slice(plain).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> BTreeMap<String, String> {
        SHARED_FILES.iter().map(|f| (f.to_string(), format!("contents of {f}"))).collect()
    }

    #[test]
    fn sealed_data_opens_with_the_same_token_only() {
        let sealed = seal("s3cret", &files()).expect("seal");
        assert!(!String::from_utf8_lossy(&sealed).contains("contents of"), "stored in the clear");
        assert_eq!(open("s3cret", &sealed).expect("open"), files());
        let e = open("other", &sealed).expect_err("wrong token opens it").to_string();
        assert!(e.contains("is --token the first server's"), "{e}");
        let mut damaged = sealed.clone();
        let n = damaged.len();
        damaged[n - 3] ^= 1;
        assert!(open("s3cret", &damaged).is_err());
        assert!(open("s3cret", b"not json").expect_err("garbage").to_string().contains("damaged"));
    }

    #[test]
    fn the_key_depends_on_the_secret_not_on_the_token_form() {
        assert_eq!(key_for("K10abc::server:s3cret"), key_for("s3cret"));
        assert_ne!(key_for("s3cret"), key_for("other"));
        assert!(!key_for("s3cret").contains("s3cret"));
    }

    #[tokio::test]
    async fn the_first_server_stores_its_pki_and_the_next_one_adopts_it() {
        let store = crate::store::memory::MemStore::new();
        let (a, b) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
        sync(&store, a.path(), "tok").await.expect("first server");
        sync(&store, b.path(), "tok").await.expect("second server");
        for f in SHARED_FILES {
            let x = std::fs::read(a.path().join(f)).expect("a");
            assert_eq!(x, std::fs::read(b.path().join(f)).expect("b"), "{f} differs");
        }
        // Restarting either is fine; a server with a different PKI of its own is refused.
        sync(&store, a.path(), "tok").await.expect("restart");
        let c = tempfile::tempdir().expect("tmp");
        crate::pki::ClusterPki::load_or_create(c.path()).expect("own pki");
        let e = sync(&store, c.path(), "tok").await.expect_err("foreign PKI accepted").to_string();
        assert!(e.contains("belongs to another cluster"), "{e}");
        // Another token cannot read this cluster's, nor start a second cluster on the same data.
        let d = tempfile::tempdir().expect("tmp");
        let e = sync(&store, d.path(), "other").await.expect_err("second cluster started").to_string();
        assert!(e.contains("another token"), "{e}");
    }
}
