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
            // Upstream's parameter codec reports strconv's error as a 400.
            Some(v) => v.parse().map(Some).map_err(|e: std::num::ParseIntError| {
                let why = match e.kind() {
                    std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => "value out of range",
                    _ => "invalid syntax",
                };
                ApiError::bad_request(format!("strconv.ParseInt: parsing {v:?}: {why}"))
            }),
        }
    }

    /// Whether the request is a dry run. Values were validated with the write's options
    /// (`handlers::validate_write_options`), which refuses anything but `All`.
    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(v) => Err(ApiError::new(
                422,
                "Invalid",
                format!("dryRun: Unsupported value: []string{{{v:?}}}: supported values: \"All\""),
            )),
        }
    }
}
