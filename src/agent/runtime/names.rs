//! Image name normalisation, the way Docker and containerd's `reference/docker` do it, so a pod's
//! `image: busybox` finds the image imported as `docker.io/library/busybox:latest`. Pure.

/// Why an image reference could not be understood.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NameError {
    /// Empty, upper-case repository, or characters a reference cannot hold.
    #[error("invalid image reference {0:?}: use a name like busybox, busybox:1.36 or registry.example:5000/team/app@sha256:<hex>")]
    Invalid(String),
}

/// A reference split into its parts: `domain/path` plus a tag and/or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// Registry host (and port), e.g. `docker.io`, `127.0.0.1:5000`.
    pub domain: String,
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageName {
    /// The canonical string: `domain/path[:tag][@digest]`.
    pub fn full(&self) -> String {
        let mut s = format!("{}/{}", self.domain, self.path);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// The tag or digest to ask a registry for (digest wins, as in Docker).
    pub fn reference(&self) -> String {
        self.digest.clone().or_else(|| self.tag.clone()).unwrap_or_else(|| "latest".into())
    }

    /// Registries on the loopback interface are spoken to over plain HTTP (Docker's default
    /// "insecure registry" rule for localhost).
    pub fn is_local_registry(&self) -> bool {
        let host = self.domain.rsplit_once(':').map(|(h, _)| h).unwrap_or(&self.domain);
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
    }
}

fn valid_path_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        && c.as_bytes()[0].is_ascii_alphanumeric()
}

/// Parses and normalises a reference: `busybox` → `docker.io/library/busybox:latest`,
/// `user/app:v1` → `docker.io/user/app:v1`, `localhost:5000/app` → `localhost:5000/app:latest`.
pub fn parse(reference: &str) -> Result<ImageName, NameError> {
    let bad = || NameError::Invalid(reference.to_string());
    let r = reference.trim();
    if r.is_empty() || r.contains(char::is_whitespace) {
        return Err(bad());
    }
    let (rest, digest) = match r.split_once('@') {
        Some((n, d)) => {
            let (algo, hex) = d.split_once(':').ok_or_else(bad)?;
            if algo.is_empty() || hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            (n, Some(d.to_string()))
        }
        None => (r, None),
    };
    // A tag is a ':' after the last '/', so a registry port is not mistaken for one.
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let t = &rest[last_slash + i + 1..];
            if t.is_empty()
                || t.len() > 128
                || !t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            {
                return Err(bad());
            }
            (&rest[..last_slash + i], Some(t.to_string()))
        }
        None => (rest, None),
    };
    // Docker's rule: the first component is a registry if it has a '.' or ':' or is localhost.
    let (mut domain, mut path) = match name.split_once('/') {
        Some((first, remainder)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            (first.to_string(), remainder.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if domain == "index.docker.io" || domain == "registry-1.docker.io" {
        domain = "docker.io".into();
    }
    if domain == "docker.io" && !path.contains('/') {
        path = format!("library/{path}");
    }
    if !path.split('/').all(valid_path_component) {
        return Err(bad());
    }
    let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
    Ok(ImageName { domain, path, tag, digest })
}

/// Shorthand for [`parse`] + [`ImageName::full`].
pub fn normalize(reference: &str) -> Result<String, NameError> {
    parse(reference).map(|n| n.full())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_gets_docker_hub_library_and_latest() {
        assert_eq!(normalize("busybox").unwrap(), "docker.io/library/busybox:latest");
    }

    #[test]
    fn a_tag_is_kept_and_a_user_repo_gets_no_library_prefix() {
        assert_eq!(normalize("busybox:1.36").unwrap(), "docker.io/library/busybox:1.36");
        assert_eq!(normalize("user/app:v1").unwrap(), "docker.io/user/app:v1");
    }

    #[test]
    fn a_registry_port_is_not_a_tag() {
        assert_eq!(normalize("localhost:5000/app").unwrap(), "localhost:5000/app:latest");
        assert_eq!(normalize("127.0.0.1:5000/a/b:2").unwrap(), "127.0.0.1:5000/a/b:2");
        assert!(parse("127.0.0.1:5000/a").unwrap().is_local_registry());
        assert!(!parse("quay.io/a/b").unwrap().is_local_registry());
    }

    #[test]
    fn fully_qualified_names_are_unchanged() {
        assert_eq!(normalize("docker.io/library/busybox:1.36").unwrap(), "docker.io/library/busybox:1.36");
        assert_eq!(normalize("index.docker.io/library/busybox").unwrap(), "docker.io/library/busybox:latest");
    }

    #[test]
    fn a_digest_reference_gets_no_default_tag() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        let n = parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(n.full(), format!("docker.io/library/busybox@{d}"));
        assert_eq!(n.reference(), d);
    }

    #[test]
    fn upper_case_and_empty_references_are_rejected() {
        assert!(normalize("BusyBox").is_err());
        assert!(normalize("").is_err());
        assert!(normalize("busybox:").is_err());
        assert!(normalize("a b").is_err());
    }
}
