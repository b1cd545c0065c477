//! `kubernetes.Semver`: semantic versions as github.com/blang/semver/v4 parses and orders them
//! (Kubernetes' semver library, 1.33), with its error texts, and the library's optional
//! normalization (`semver('v1.0', true)`: no `v`, missing minor/patch filled, leading zeros
//! dropped).

use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pre {
    Num(u64),
    Alpha(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Semver {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pre: Vec<Pre>,
    build: Vec<String>,
}

fn only(s: &str, alnum: bool) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (alnum && (b.is_ascii_alphabetic() || b == b'-')))
}

fn leading_zero(s: &str) -> bool {
    s.len() > 1 && s.starts_with('0')
}

fn number(s: &str, what: &str) -> Result<u64, String> {
    if !only(s, false) {
        return Err(format!("Invalid character(s) found in {what} number {s:?}"));
    }
    if leading_zero(s) {
        let cap = format!("{}{}", what[..1].to_uppercase(), &what[1..]);
        return Err(format!("{cap} number must not contain leading zeroes {s:?}"));
    }
    s.parse::<u64>().map_err(|_| {
        if s.is_empty() {
            format!("strconv.ParseUint: parsing {s:?}: invalid syntax")
        } else {
            format!("strconv.ParseUint: parsing {s:?}: value out of range")
        }
    })
}

impl Semver {
    /// `semver.Parse`.
    pub fn parse(s: &str) -> Result<Semver, String> {
        if s.is_empty() {
            return Err("Version string empty".into());
        }
        let parts: Vec<&str> = s.splitn(3, '.').collect();
        if parts.len() != 3 {
            return Err("No Major.Minor.Patch elements found".into());
        }
        let major = number(parts[0], "major")?;
        let minor = number(parts[1], "minor")?;
        let mut patch_str = parts[2];
        let mut build: Vec<&str> = Vec::new();
        let mut pre: Vec<&str> = Vec::new();
        if let Some(i) = patch_str.find('+') {
            build = patch_str[i + 1..].split('.').collect();
            patch_str = &patch_str[..i];
        }
        if let Some(i) = patch_str.find('-') {
            pre = patch_str[i + 1..].split('.').collect();
            patch_str = &patch_str[..i];
        }
        let patch = number(patch_str, "patch")?;
        let mut v = Semver { major, minor, patch, pre: Vec::new(), build: Vec::new() };
        for p in pre {
            if p.is_empty() {
                return Err("Prerelease is empty".into());
            }
            if only(p, false) {
                if leading_zero(p) {
                    return Err(format!("Numeric PreRelease version must not contain leading zeroes {p:?}"));
                }
                v.pre.push(Pre::Num(
                    p.parse().map_err(|_| format!("strconv.ParseUint: parsing {p:?}: value out of range"))?,
                ));
            } else if only(p, true) {
                v.pre.push(Pre::Alpha(p.to_string()));
            } else {
                return Err(format!("Invalid character(s) found in prerelease {p:?}"));
            }
        }
        for b in build {
            if b.is_empty() {
                return Err("Build meta data is empty".into());
            }
            if !only(b, true) {
                return Err(format!("Invalid character(s) found in build meta data {b:?}"));
            }
            v.build.push(b.to_string());
        }
        Ok(v)
    }

    /// The library's `normalizeAndParse`.
    pub fn parse_normalized(s: &str) -> Result<Semver, String> {
        let s = s.strip_prefix('v').unwrap_or(s);
        let mut parts: Vec<String> = s
            .splitn(3, '.')
            .map(|p| {
                if p.len() > 1 {
                    let t = p.trim_start_matches('0');
                    if t.is_empty() || !t.as_bytes()[0].is_ascii_digit() {
                        format!("0{t}")
                    } else {
                        t.to_string()
                    }
                } else {
                    p.to_string()
                }
            })
            .collect();
        if parts.len() < 3 {
            if parts.last().is_some_and(|p| p.contains(['+', '-'])) {
                return Err("short version cannot contain PreRelease/Build meta data".into());
            }
            while parts.len() < 3 {
                parts.push("0".into());
            }
        }
        Semver::parse(&parts.join("."))
    }

    /// Semver precedence (build metadata ignored).
    pub fn compare(&self, o: &Semver) -> Ordering {
        let c = (self.major, self.minor, self.patch).cmp(&(o.major, o.minor, o.patch));
        if c != Ordering::Equal {
            return c;
        }
        match (self.pre.is_empty(), o.pre.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Greater,
            (false, true) => return Ordering::Less,
            _ => {}
        }
        for (a, b) in self.pre.iter().zip(o.pre.iter()) {
            let c = match (a, b) {
                (Pre::Num(x), Pre::Num(y)) => x.cmp(y),
                (Pre::Num(_), Pre::Alpha(_)) => Ordering::Less,
                (Pre::Alpha(_), Pre::Num(_)) => Ordering::Greater,
                (Pre::Alpha(x), Pre::Alpha(y)) => x.cmp(y),
            };
            if c != Ordering::Equal {
                return c;
            }
        }
        self.pre.len().cmp(&o.pre.len())
    }
}

impl std::fmt::Display for Semver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        let pre: Vec<String> = self
            .pre
            .iter()
            .map(|p| match p {
                Pre::Num(n) => n.to_string(),
                Pre::Alpha(a) => a.clone(),
            })
            .collect();
        if !pre.is_empty() {
            write!(f, "-{}", pre.join("."))?;
        }
        if !self.build.is_empty() {
            write!(f, "+{}", self.build.join("."))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order_as_blang_semver() {
        let v = |s: &str| Semver::parse(s).unwrap();
        assert_eq!(v("1.2.3-beta.1+build.1").to_string(), "1.2.3-beta.1+build.1");
        assert_eq!(Semver::parse("v1.0").unwrap_err(), "No Major.Minor.Patch elements found");
        assert_eq!(Semver::parse("").unwrap_err(), "Version string empty");
        assert_eq!(Semver::parse("01.1.1").unwrap_err(), "Major number must not contain leading zeroes \"01\"");
        assert_eq!(Semver::parse("1.x.1").unwrap_err(), "Invalid character(s) found in minor number \"x\"");
        for bad in [" 1.0.0", "1. 0.0", "1.0.0 ", "1", "1.1", "1.0.0-", "1.0.0+", "1.0.0-01"] {
            assert!(Semver::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(v("1.0.0").compare(&v("1.2.3")), Ordering::Less);
        assert_eq!(v("1.0.0-alpha").compare(&v("1.0.0")), Ordering::Less);
        assert_eq!(v("1.0.0-alpha.1").compare(&v("1.0.0-alpha.beta")), Ordering::Less);
        assert_eq!(v("1.0.0-2").compare(&v("1.0.0-10")), Ordering::Less);
        assert_eq!(v("1.0.0+a").compare(&v("1.0.0+b")), Ordering::Equal);
        let n = |s: &str| Semver::parse_normalized(s);
        assert_eq!(n("v01.01").unwrap(), v("1.1.0"));
        assert_eq!(n("1").unwrap(), v("1.0.0"));
        assert!(n("").is_err() && n(" 1.0.0").is_err() && n("1-rc").is_err());
    }
}
