//! Kubernetes label selectors.
//!
//! A [`Selector`] is a conjunction of [`Requirement`]s, parsed from the same string syntax
//! that `kubectl -l` and the API's `labelSelector` parameter accept:
//!
//! | syntax                 | meaning                                           |
//! |------------------------|---------------------------------------------------|
//! | `key=value`, `key==value` | the label is present with that value           |
//! | `key!=value`           | the label is absent, or present with another value |
//! | `key in (a,b)`         | the label is present with one of the values       |
//! | `key notin (a,b)`      | the label is absent, or has none of the values    |
//! | `key`                  | the label is present                              |
//! | `!key`                 | the label is absent                               |
//! | `key>3`, `key<3`       | the label is an integer above / below the bound   |
//!
//! Requirements are separated by commas and must all hold (logical AND); the empty selector
//! matches everything. The grammar, the lexer's notion of an identifier and the wording of
//! the errors follow `k8s.io/apimachinery/pkg/labels/selector.go`, so a selector that
//! Kubernetes accepts is accepted here with the same meaning, and one it rejects is a
//! [`SelectorError`] naming the offending part.
//!
//! ```
//! use rudder_balance::Selector;
//! use std::collections::BTreeMap;
//!
//! let canary: Selector = "app=biz1,version in (4.2)".parse().unwrap();
//! let labels = BTreeMap::from([
//!     ("app".to_string(), "biz1".to_string()),
//!     ("version".to_string(), "4.2".to_string()),
//!     ("zone".to_string(), "prod".to_string()),
//! ]);
//! assert!(canary.matches(&labels));
//! assert!("!canary".parse::<Selector>().unwrap().matches(&labels));
//! ```

mod error;
mod parse;
#[cfg(test)]
mod tests;

pub use self::error::SelectorError;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A label selector: every requirement must hold for a set of labels to match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// One condition of a [`Selector`] on a single label key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value`: absent, or present with another value.
    NotEquals(String, String),
    /// `key in (v1,v2)`: present with one of the values.
    In(String, Vec<String>),
    /// `key notin (v1,v2)`: absent, or present with none of the values.
    NotIn(String, Vec<String>),
    /// `key`: present.
    Exists(String),
    /// `!key`: absent.
    DoesNotExist(String),
    /// `key>n`: present, an integer, and greater than `n`.
    GreaterThan(String, i64),
    /// `key<n`: present, an integer, and less than `n`.
    LessThan(String, i64),
}

// === impl Selector ===

impl Selector {
    /// The selector that matches every set of labels.
    pub const fn everything() -> Self {
        Self {
            requirements: Vec::new(),
        }
    }

    /// Parses the Kubernetes string form (see the [module docs](self)).
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        parse::parse(s).map(|requirements| Self { requirements })
    }

    /// Builds the equality selector that a Service's `spec.selector` map describes.
    pub fn from_map<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        let requirements = map
            .into_iter()
            .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
            .collect();
        Self { requirements }
    }

    /// The requirements, in the order they were written.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether this selector matches everything.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

// === impl Requirement ===

impl Requirement {
    /// The label key this requirement looks at.
    pub fn key(&self) -> &str {
        match self {
            Self::Equals(k, _)
            | Self::NotEquals(k, _)
            | Self::In(k, _)
            | Self::NotIn(k, _)
            | Self::Exists(k)
            | Self::DoesNotExist(k)
            | Self::GreaterThan(k, _)
            | Self::LessThan(k, _) => k,
        }
    }

    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(self.key());
        match self {
            Self::Equals(_, v) => value == Some(v),
            Self::NotEquals(_, v) => value != Some(v),
            Self::In(_, vs) => value.is_some_and(|x| vs.contains(x)),
            Self::NotIn(_, vs) => value.is_none_or(|x| !vs.contains(x)),
            Self::Exists(_) => value.is_some(),
            Self::DoesNotExist(_) => value.is_none(),
            Self::GreaterThan(_, n) => value
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Self::LessThan(_, n) => value
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Equals(k, v) => write!(f, "{k}={v}"),
            Self::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Self::In(k, vs) => write!(f, "{k} in ({})", vs.join(",")),
            Self::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(",")),
            Self::Exists(k) => f.write_str(k),
            Self::DoesNotExist(k) => write!(f, "!{k}"),
            Self::GreaterThan(k, n) => write!(f, "{k}>{n}"),
            Self::LessThan(k, n) => write!(f, "{k}<{n}"),
        }
    }
}

// === label syntax ===

const NAME_PART_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`
fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Whether `s` is a lowercase RFC 1123 subdomain (at most 253 characters).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && !s.is_empty() && s.split('.').all(is_dns1123_label)
}

/// Whether `s` is a lowercase RFC 1123 label (at most 63 characters).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Checks a label key (`[prefix/]name`), returning the Kubernetes explanation when invalid.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("prefix part must be non-empty".into());
        }
        if !is_dns1123_subdomain(prefix) {
            return Err("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into());
        }
    }
    if name.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Err("name part must be no more than 63 characters".into());
    }
    if !is_name_part(name) {
        return Err(NAME_PART_MSG.into());
    }
    Ok(())
}

/// Checks a label value, returning the Kubernetes explanation when invalid.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if !value.is_empty() && !is_name_part(value) {
        return Err(VALUE_MSG.into());
    }
    Ok(())
}
