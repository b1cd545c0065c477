//! Registry pulls with the `oci-client` crate, mirroring containerd's `client.Pull` (guide §2):
//! resolve the reference to a manifest (or index, then this platform's manifest), write every
//! blob into the content store under a lease with GC and distribution-source labels, record the
//! image, unpack it. HTTPS everywhere except registries on localhost/127.0.0.1, which are spoken
//! to over plain HTTP (Docker's default insecure-registry rule). Anonymous access only, with the
//! registry's Bearer-token flow handled by oci-client.

use super::client::{Client, Lease};
use super::images::{self, Desc, ImageError};
use super::names;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

const ACCEPT: &[&str] =
    &[images::MT_OCI_INDEX, images::MT_DOCKER_LIST, images::MT_OCI_MANIFEST, images::MT_DOCKER_MANIFEST];

fn perr(image: &str, reason: impl std::fmt::Display) -> ImageError {
    ImageError::Pull { image: image.to_string(), reason: reason.to_string() }
}

fn media_type_of(doc: &Value) -> String {
    match doc.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => m.to_string(),
        None if doc.get("manifests").is_some() => images::MT_OCI_INDEX.into(),
        None => images::MT_OCI_MANIFEST.into(),
    }
}

struct Puller<'a> {
    c: &'a Client,
    lease: &'a Lease,
    oci: oci_client::Client,
    name: String,
    domain: String,
    repo: String,
    source_label: (String, String),
}

impl Puller<'_> {
    fn by_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(self.domain.clone(), self.repo.clone(), digest.to_string())
    }

    /// Fetches a manifest or index; checks its digest; stores it with its GC labels.
    async fn manifest(
        &self,
        reference: &Reference,
        expect: Option<&str>,
    ) -> Result<(Desc, Value, Vec<u8>), ImageError> {
        let (bytes, _) = self
            .oci
            .pull_manifest_raw(reference, &RegistryAuth::Anonymous, ACCEPT)
            .await
            .map_err(|e| perr(&self.name, format!("fetch manifest: {e}")))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if let Some(want) = expect {
            if want != digest {
                return Err(perr(&self.name, format!("manifest digest {digest} does not match {want}")));
            }
        }
        let doc: Value =
            serde_json::from_slice(&bytes).map_err(|e| perr(&self.name, format!("manifest is not JSON: {e}")))?;
        if doc.get("schemaVersion").and_then(|v| v.as_i64()) == Some(1) {
            return Err(perr(
                &self.name,
                "Docker schema 1 images are not supported; re-push the image with a current client",
            ));
        }
        let desc = Desc {
            media_type: media_type_of(&doc),
            digest,
            size: bytes.len() as i64,
            annotations: HashMap::new(),
            platform: None,
        };
        Ok((desc, doc, bytes.to_vec()))
    }

    async fn store_doc(&self, desc: &Desc, doc: &Value, bytes: Vec<u8>) -> Result<(), ImageError> {
        images::write_blob(self.c, self.lease, desc, std::io::Cursor::new(bytes)).await?;
        let mut labels = images::gc_labels(&desc.media_type, doc);
        labels.insert(self.source_label.0.clone(), self.source_label.1.clone());
        images::set_labels(self.c, &desc.digest, labels).await?;
        Ok(())
    }

    /// Streams a blob from the registry into the content store (skipped when present).
    async fn blob(&self, d: &Desc) -> Result<(), ImageError> {
        if !images::has_blob(self.c, &d.digest).await? {
            let reference = self.by_digest(&d.digest);
            let sized = self
                .oci
                .pull_blob_stream(&reference, d.digest.as_str())
                .await
                .map_err(|e| perr(&self.name, format!("fetch blob {}: {e}", d.digest)))?;
            use futures::StreamExt;
            let chunks = sized.stream.map(|r| r.map(|b| b.to_vec()).map_err(|e| e.to_string()));
            images::write_blob_stream(self.c, self.lease, d, Box::pin(chunks)).await?;
        } else {
            images::write_blob(self.c, self.lease, d, std::io::empty()).await?;
        }
        let labels: BTreeMap<String, String> = [self.source_label.clone()].into();
        images::set_labels(self.c, &d.digest, labels).await?;
        Ok(())
    }
}

/// Pulls `name` (already normalised) and unpacks it; returns the image id (top digest).
pub async fn pull(c: &Client, name: &str) -> Result<String, ImageError> {
    let parsed = names::parse(name).map_err(|e| perr(name, e))?;
    let protocol = if parsed.is_local_registry() {
        ClientProtocol::HttpsExcept(vec![parsed.domain.clone()])
    } else {
        ClientProtocol::Https
    };
    // skiff uses the ring provider only (DESIGN); reqwest is built without one and uses the
    // process default, installed here in case the caller has not.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let oci = oci_client::Client::new(ClientConfig { protocol, ..Default::default() });
    let lease = c.lease().await?;
    let p = Puller {
        c,
        lease: &lease,
        oci,
        name: name.to_string(),
        domain: parsed.domain.clone(),
        repo: parsed.path.clone(),
        source_label: (format!("containerd.io/distribution.source.{}", parsed.domain), parsed.path.clone()),
    };
    let res = pull_leased(&p, &parsed).await;
    lease.release().await;
    if let Err(e) = &res {
        tracing::warn!(image = name, error = %e, "image pull failed");
    }
    res
}

async fn pull_leased(p: &Puller<'_>, parsed: &names::ImageName) -> Result<String, ImageError> {
    let top_ref = match (&parsed.digest, &parsed.tag) {
        (Some(d), _) => Reference::with_digest(parsed.domain.clone(), parsed.path.clone(), d.clone()),
        (None, Some(t)) => Reference::with_tag(parsed.domain.clone(), parsed.path.clone(), t.clone()),
        (None, None) => Reference::with_tag(parsed.domain.clone(), parsed.path.clone(), "latest".into()),
    };
    let (top, top_doc, top_bytes) = p.manifest(&top_ref, parsed.digest.as_deref()).await?;
    // Children first, parents last, so a parent's GC labels never point at missing content.
    let (manifest_desc, manifest_doc, manifest_bytes, index) =
        if top.media_type == images::MT_OCI_INDEX || top.media_type == images::MT_DOCKER_LIST {
            let list: Vec<Desc> = top_doc
                .get("manifests")
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
                .filter_map(Desc::from_json)
                .collect();
            let chosen = images::pick_platform(&list)
                .cloned()
                .ok_or_else(|| perr(&p.name, format!("no linux/{} manifest in the index", images::go_arch())))?;
            let (md, mdoc, mbytes) = p.manifest(&p.by_digest(&chosen.digest), Some(&chosen.digest)).await?;
            (md, mdoc, mbytes, Some((top.clone(), top_doc.clone(), top_bytes)))
        } else {
            (top.clone(), top_doc.clone(), top_bytes, None)
        };
    let mut children: Vec<Desc> = manifest_doc
        .get("layers")
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
        .filter_map(Desc::from_json)
        .collect();
    children.extend(manifest_doc.get("config").and_then(Desc::from_json));
    for d in &children {
        p.blob(d).await?;
    }
    // The raw bytes as fetched are stored: they are what the digest was computed over.
    p.store_doc(&manifest_desc, &manifest_doc, manifest_bytes).await?;
    if let Some((idesc, idoc, ibytes)) = index {
        p.store_doc(&idesc, &idoc, ibytes).await?;
    }
    images::put_image(p.c, &p.name, &top).await?;
    let img = images::resolve(p.c, &p.name).await?;
    images::unpack(p.c, &img, p.lease).await?;
    tracing::info!(image = %p.name, id = %top.digest, "pulled image");
    Ok(top.digest)
}
