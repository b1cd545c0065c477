//! Query parameters of API requests (metav1.ListOptions, GetOptions, DeleteOptions,
//! CreateOptions, PatchOptions), parsed leniently as upstream does: booleans accept
//! Go's ParseBool forms.

use super::errors::{ApiError, ApiResult};

#[derive(Debug, Default, Clone)]
pub struct Query {
    pub pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        Query { pairs: form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect() }
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.pairs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }

    pub fn all(&self, k: &str) -> Vec<String> {
        self.pairs.iter().filter(|(a, _)| a == k).map(|(_, v)| v.clone()).collect()
    }

    /// Go's strconv.ParseBool forms; absent = false.
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "t" | "T" | "true" | "TRUE" | "True"))
    }

    pub fn int(&self, k: &str) -> ApiResult<Option<i64>> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid value {v:?} for {k}: not an integer"))),
        }
    }

    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(v) => Err(ApiError::bad_request(format!("Invalid dryRun value {v:?}: supported values: \"All\""))),
        }
    }
}
