//! Label selectors over pods, namespaces and nodes, with `metav1.LabelSelector` semantics: an
//! empty selector (`{}`) matches everything, an absent one nothing (as
//! `LabelSelectorAsSelector(nil)` gives `labels.Nothing()`), requirements are ANDed.
//!
//! Pure; used by inter-pod affinity, topology spread and PodDisruptionBudget checks.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

/// Whether `sel` matches `labels`; `None` matches nothing.
pub fn matches(sel: Option<&LabelSelector>, labels: &Labels) -> bool {
    match sel {
        None => false,
        Some(s) => selector_matches(s, labels),
    }
}

/// Whether a present selector matches; `{}` matches every label set.
pub fn selector_matches(s: &LabelSelector, labels: &Labels) -> bool {
    s.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v))
        && s.match_expressions.iter().flatten().all(|r| requirement_matches(r, labels))
}

/// Whether a selector is `{}` (matches everything).
pub fn is_empty(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(|m| m.is_empty()) && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

fn requirement_matches(r: &LabelSelectorRequirement, labels: &Labels) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    let v = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => v.is_some_and(|v| values.contains(v)),
        "NotIn" => !v.is_some_and(|v| values.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        // Validation rejects other operators; an unknown one matches nothing.
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    pub(crate) fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector { match_labels: Some(labels(pairs)), ..Default::default() }
    }

    #[test]
    fn an_absent_selector_matches_nothing_and_an_empty_one_everything() {
        let l = labels(&[("app", "web")]);
        assert!(!matches(None, &l));
        assert!(matches(Some(&LabelSelector::default()), &l));
        assert!(is_empty(&LabelSelector::default()));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let mut s = sel(&[("app", "web")]);
        assert!(matches(Some(&s), &l));
        s.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "NotIn".into(),
            values: Some(vec!["front".into()]),
        }]);
        assert!(!matches(Some(&s), &l));
        let exists = |op: &str| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: op.into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(matches(Some(&exists("Exists")), &l));
        assert!(!matches(Some(&exists("DoesNotExist")), &l));
    }
}
