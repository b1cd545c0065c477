//! The registry an API server routes by: the built-in table plus one resource per served
//! version of every established CustomResourceDefinition. The custom part is replaced as a
//! whole (one `Arc` swap) whenever the CRDs change, so readers never lock for long and an old
//! set is freed as soon as the last request using it ends.

use std::any::Any;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value;

use super::{custom, Resource, BUILTIN};

/// A served resource: a built-in one or a custom one.
#[derive(Debug, Clone)]
pub enum ResRef {
    Builtin(&'static Resource),
    Custom(Arc<Resource>),
}

impl Deref for ResRef {
    type Target = Resource;
    fn deref(&self) -> &Resource {
        match self {
            ResRef::Builtin(r) => r,
            ResRef::Custom(r) => r,
        }
    }
}

impl PartialEq for ResRef {
    fn eq(&self, other: &ResRef) -> bool {
        **self == **other
    }
}

impl From<&'static Resource> for ResRef {
    fn from(r: &'static Resource) -> ResRef {
        ResRef::Builtin(r)
    }
}

/// Built-in and custom resources.
#[derive(Default)]
pub struct Registry {
    custom: RwLock<Arc<Vec<Arc<Resource>>>>,
    /// Bumped on every change of the custom set (OpenAPI and discovery caches key on it).
    generation: AtomicU64,
    /// One derived value (the OpenAPI documents) cached for a generation.
    cache: std::sync::Mutex<Option<(u64, Arc<dyn Any + Send + Sync>)>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The current custom resources.
    pub fn custom(&self) -> Arc<Vec<Arc<Resource>>> {
        match self.custom.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A value derived from the served resources, computed once per generation.
    pub fn cached<T: Any + Send + Sync>(&self, build: impl FnOnce(&Registry) -> T) -> Arc<T> {
        let gen = self.generation();
        if let Ok(g) = self.cache.lock() {
            if let Some((cg, v)) = g.as_ref() {
                if *cg == gen {
                    if let Ok(t) = v.clone().downcast::<T>() {
                        return t;
                    }
                }
            }
        }
        let t = Arc::new(build(self));
        if let Ok(mut g) = self.cache.lock() {
            *g = Some((gen, t.clone() as Arc<dyn Any + Send + Sync>));
        }
        t
    }

    /// Replaces the custom resources with those the given CRDs serve. Returns whether the
    /// served set changed. Built-in resources always win a clash (a CRD cannot shadow `pods`).
    pub fn set_crds(&self, crds: &[Value]) -> bool {
        let current = self.custom();
        let mut next: Vec<Arc<Resource>> = Vec::new();
        for crd in crds {
            for r in custom::resources_from_crd(crd) {
                let clash = BUILTIN.iter().any(|b| b.group == r.group && b.plural == r.plural)
                    || next.iter().any(|o| o.group == r.group && o.version == r.version && o.plural == r.plural);
                if clash {
                    continue;
                }
                // An unchanged version keeps its resource, and with it its compiled rules: a
                // CRD's rules are compiled once, not on every change of any CRD.
                match current.iter().find(|o| ***o == r) {
                    Some(o) => next.push(o.clone()),
                    None => {
                        if let Some(c) = &r.custom {
                            c.rules();
                        }
                        next.push(Arc::new(r));
                    }
                }
            }
        }
        let mut g = match self.custom.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if **g == next {
            return false;
        }
        *g = Arc::new(next);
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Looks up a served resource by group, version and plural name.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResRef> {
        if let Some(r) = super::find(group, version, plural) {
            return Some(ResRef::Builtin(r));
        }
        self.custom()
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .map(|r| ResRef::Custom(r.clone()))
    }

    /// Every served resource: built-ins first, then custom ones.
    pub fn all(&self) -> Vec<ResRef> {
        let mut out: Vec<ResRef> = BUILTIN.iter().map(ResRef::Builtin).collect();
        out.extend(self.custom().iter().map(|r| ResRef::Custom(r.clone())));
        out
    }

    /// The served group/versions in discovery order: built-ins, then custom groups.
    pub fn group_versions(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for r in self.all() {
            let gv = (r.group.to_string(), r.version.to_string());
            if !out.contains(&gv) {
                out.push(gv);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd(plural: &str, versions: &[&str]) -> Value {
        let vs: Vec<Value> = versions
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"name": v, "served": true, "storage": i == 0, "schema": {"openAPIV3Schema": {"type": "object"}}}))
            .collect();
        let mut c = json!({
            "metadata": {"name": format!("{plural}.example.com")},
            "spec": {"group": "example.com", "scope": "Namespaced", "names": {"plural": plural, "kind": "Thing"}, "versions": vs}
        });
        c["status"] = custom::compute_status(&c, &[], "t");
        c
    }

    #[test]
    fn crds_add_one_resource_per_served_version_and_go_away_with_them() {
        let reg = Registry::new();
        assert!(reg.find("example.com", "v1", "things").is_none());
        assert!(reg.set_crds(&[crd("things", &["v1", "v2"])]));
        assert!(reg.find("example.com", "v1", "things").is_some());
        assert!(reg.find("example.com", "v2", "things").is_some_and(|r| r.is_custom()));
        assert!(reg.group_versions().contains(&("example.com".into(), "v2".into())));
        let g = reg.generation();
        assert!(!reg.set_crds(&[crd("things", &["v1", "v2"])]), "same CRDs, same registry");
        assert_eq!(reg.generation(), g);
        assert!(reg.set_crds(&[]));
        assert!(reg.find("example.com", "v1", "things").is_none());
        assert!(reg.find("", "v1", "pods").is_some());
    }

    #[test]
    fn replaced_custom_sets_are_freed() {
        let reg = Registry::new();
        reg.set_crds(&[crd("things", &["v1"])]);
        let old = Arc::downgrade(&reg.custom()[0]);
        reg.set_crds(&[crd("things", &["v1", "v2"]), crd("others", &["v1"])]);
        let kept = reg.custom();
        assert!(
            old.upgrade().is_some_and(|o| Arc::ptr_eq(&o, &kept[0])),
            "an unchanged version keeps its resource (and its compiled rules)"
        );
        drop(kept);
        // v2 becomes the storage version: v1 changes and its old resource goes.
        reg.set_crds(&[crd("things", &["v2", "v1"])]);
        assert!(old.upgrade().is_none(), "the previous resource is dropped, not leaked");
    }
}
