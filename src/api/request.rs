//! Turns a request path into what it addresses (k8s.io/apiserver's RequestInfo): the
//! resource, namespace, name and subresource, for `/api/v1/...` and `/apis/<g>/<v>/...`.

use crate::registry::{Registry, ResRef};

#[derive(Debug, PartialEq)]
pub struct Target {
    pub resource: ResRef,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// A resource path.
    Resource(Target),
    /// `/api/v1`, `/apis/apps/v1`: a group-version discovery document.
    GroupVersion { group: String, version: String },
    /// `/apis/apps`: a group document.
    Group(String),
    /// A path under a known prefix that names nothing we serve.
    NotFound,
}

fn decode(seg: &str) -> String {
    // Names are DNS-ish; percent-decoding covers clients that escape anyway.
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&seg[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `path` (without query). Returns None for paths outside `/api` and `/apis`.
pub fn parse(reg: &Registry, path: &str) -> Option<Parsed> {
    let segs: Vec<String> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).map(decode).collect();
    let (group, version, rest) = match segs.first().map(|s| s.as_str()) {
        Some("api") => match segs.get(1) {
            Some(v) => (String::new(), v.clone(), &segs[2..]),
            None => return None,
        },
        Some("apis") => match (segs.get(1), segs.get(2)) {
            (Some(g), Some(v)) => (g.clone(), v.clone(), &segs[3..]),
            (Some(g), None) => return Some(Parsed::Group(g.clone())),
            _ => return None,
        },
        _ => return None,
    };
    if rest.is_empty() {
        return Some(Parsed::GroupVersion { group, version });
    }
    let find = |plural: &str| reg.find(&group, &version, plural);
    // namespaces/{ns}/{resource}/... addresses a namespaced resource, unless the third segment
    // is not a resource (namespaces/{name}/status, /finalize).
    if rest[0] == "namespaces" && rest.len() >= 3 {
        if let Some(r) = find(&rest[2]).filter(|r| r.namespaced) {
            return Some(Parsed::Resource(Target {
                resource: r,
                namespace: Some(rest[1].clone()),
                name: rest.get(3).cloned(),
                subresource: if rest.len() > 4 { Some(rest[4..].join("/")) } else { None },
            }));
        }
    }
    match find(&rest[0]) {
        Some(r) => Some(Parsed::Resource(Target {
            resource: r,
            namespace: None,
            name: rest.get(1).cloned(),
            subresource: if rest.len() > 2 { Some(rest[2..].join("/")) } else { None },
        })),
        None => Some(Parsed::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: &str) -> Option<Parsed> {
        super::parse(&Registry::new(), p)
    }

    fn target(p: &str) -> Target {
        match parse(p) {
            Some(Parsed::Resource(t)) => t,
            other => panic!("{p}: {other:?}"),
        }
    }

    #[test]
    fn namespaced_paths_parse() {
        let t = target("/api/v1/namespaces/default/pods/web/log");
        assert_eq!(t.resource.plural, "pods");
        assert_eq!(t.namespace.as_deref(), Some("default"));
        assert_eq!(t.name.as_deref(), Some("web"));
        assert_eq!(t.subresource.as_deref(), Some("log"));
        let t = target("/apis/apps/v1/namespaces/x/deployments");
        assert_eq!((&*t.resource.kind, t.name), ("Deployment", None));
    }

    #[test]
    fn namespace_items_and_their_subresources_parse() {
        let t = target("/api/v1/namespaces/foo");
        assert_eq!((&*t.resource.plural, t.name.as_deref()), ("namespaces", Some("foo")));
        let t = target("/api/v1/namespaces/foo/status");
        assert_eq!((t.name.as_deref(), t.subresource.as_deref()), (Some("foo"), Some("status")));
    }

    #[test]
    fn cluster_wide_lists_and_discovery_parse() {
        let t = target("/api/v1/pods");
        assert_eq!((t.namespace, t.name), (None, None));
        assert_eq!(parse("/apis/apps/v1"), Some(Parsed::GroupVersion { group: "apps".into(), version: "v1".into() }));
        assert_eq!(parse("/apis/apps"), Some(Parsed::Group("apps".into())));
        assert_eq!(parse("/api/v1/nothings"), Some(Parsed::NotFound));
        assert_eq!(parse("/healthz"), None);
    }
}
