//! Bearer tokens and what each may do (a tiny RBAC).

/// What a bearer token may do.
///
/// ```
/// use rudder_testkit::{Access, Rule};
/// // May read EndpointSlices and Services in `demo`, nothing else.
/// let reader = Access::rules([
///     Rule::new(["get", "list", "watch"], ["endpointslices", "services"]).in_namespace("demo"),
/// ]);
/// # let _ = reader;
/// ```
#[derive(Clone, Debug)]
pub struct Access {
    user: String,
    rules: Option<Vec<Rule>>,
}

/// One permission: verbs on resources (plural names), optionally in one namespace.
#[derive(Clone, Debug)]
pub struct Rule {
    verbs: Vec<String>,
    resources: Vec<String>,
    namespace: Option<String>,
}

impl Access {
    /// Everything is allowed (like `cluster-admin`).
    pub fn admin() -> Self {
        Self {
            user: "admin".into(),
            rules: None,
        }
    }

    /// Only what one of `rules` allows; anything else is a 403 `Status`.
    pub fn rules(rules: impl IntoIterator<Item = Rule>) -> Self {
        Self {
            user: "restricted".into(),
            rules: Some(rules.into_iter().collect()),
        }
    }

    /// Names the user in 403 messages.
    pub fn user(mut self, name: impl Into<String>) -> Self {
        self.user = name.into();
        self
    }

    pub(crate) fn user_name(&self) -> &str {
        &self.user
    }

    pub(crate) fn allows(&self, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        rules.iter().any(|r| {
            (r.verbs.iter().any(|v| v == verb || v == "*"))
                && r.resources.iter().any(|x| x == resource || x == "*")
                && match (&r.namespace, namespace) {
                    (None, _) => true,
                    (Some(a), Some(b)) => a == b,
                    (Some(_), None) => false,
                }
        })
    }
}

impl Rule {
    /// Allows `verbs` (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, or `*`)
    /// on `resources` (`pods`, `pods/status`, `endpointslices`, …, or `*`) in every namespace.
    pub fn new<V, R>(verbs: V, resources: R) -> Self
    where
        V: IntoIterator,
        V::Item: Into<String>,
        R: IntoIterator,
        R::Item: Into<String>,
    {
        Self {
            verbs: verbs.into_iter().map(Into::into).collect(),
            resources: resources.into_iter().map(Into::into).collect(),
            namespace: None,
        }
    }

    /// Restricts the rule to one namespace (a Role rather than a ClusterRole).
    pub fn in_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }
}
