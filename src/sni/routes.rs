//! Which pool a server name goes to: exact names first, then `*.` wildcards, the longest
//! (most specific) suffix winning, then the default. `*.example.com` matches any name
//! ending in `.example.com` (`www.example.com`, `a.b.example.com`) but not `example.com`
//! itself, as nginx's `*.` server names do. Names are compared lowercased. Pure.

use std::collections::HashMap;

/// A listener's routes to pools `P`.
#[derive(Debug, Clone)]
pub struct Routes<P> {
    exact: HashMap<String, P>,
    /// `(".example.com", pool)`, longest suffix first.
    wildcards: Vec<(String, P)>,
    default: Option<P>,
}

/// A route's name pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    Exact(String),
    /// The suffix after the `*`, with its leading dot.
    Wildcard(String),
}

impl Pattern {
    /// `name` or `*.name`, where `name` is a host name; lowercased. `None` otherwise (the
    /// config says why).
    pub fn parse(text: &str) -> Option<Pattern> {
        match text.strip_prefix("*.") {
            Some(rest) => super::hello::host_name(rest.as_bytes())
                .ok()
                .map(|n| Pattern::Wildcard(format!(".{n}"))),
            None => super::hello::host_name(text.as_bytes())
                .ok()
                .map(Pattern::Exact),
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(n) => f.write_str(n),
            Pattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

impl<P> Routes<P> {
    /// Routes from `(pattern, pool)` pairs (a pattern given twice: the first one counts; the
    /// config refuses that before it gets here) and the default.
    pub fn new(routes: impl IntoIterator<Item = (Pattern, P)>, default: Option<P>) -> Routes<P> {
        let mut exact = HashMap::new();
        let mut wildcards: Vec<(String, P)> = Vec::new();
        for (pattern, pool) in routes {
            match pattern {
                Pattern::Exact(name) => {
                    exact.entry(name).or_insert(pool);
                }
                Pattern::Wildcard(suffix) => {
                    if !wildcards.iter().any(|(s, _)| *s == suffix) {
                        wildcards.push((suffix, pool));
                    }
                }
            }
        }
        // Longest first; equal lengths in a fixed order so routing never depends on the
        // order of the file (they cannot both match one name anyway).
        wildcards.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Routes {
            exact,
            wildcards,
            default,
        }
    }

    /// The pool for a ClientHello naming `name` (lowercased), or none.
    pub fn route(&self, name: Option<&str>) -> Option<&P> {
        let Some(name) = name else {
            return self.default.as_ref();
        };
        if let Some(pool) = self.exact.get(name) {
            return Some(pool);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, pool)| pool)
            .or(self.default.as_ref())
    }

    /// Every route, exact names first, each as the pattern it was written as.
    pub fn iter(&self) -> impl Iterator<Item = (Pattern, &P)> + '_ {
        let mut exact: Vec<(&String, &P)> = self.exact.iter().collect();
        exact.sort_by(|a, b| a.0.cmp(b.0));
        exact
            .into_iter()
            .map(|(n, p)| (Pattern::Exact(n.clone()), p))
            .chain(
                self.wildcards
                    .iter()
                    .map(|(s, p)| (Pattern::Wildcard(s.clone()), p)),
            )
    }

    pub fn default(&self) -> Option<&P> {
        self.default.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes<&'static str> {
        let p = |s: &str| Pattern::parse(s).unwrap();
        Routes::new(
            [
                (p("api.example.com"), "api"),
                (p("*.example.com"), "web"),
                (p("*.eu.example.com"), "eu"),
                (p("Admin.Example.com"), "admin"),
            ],
            Some("default"),
        )
    }

    #[test]
    fn exact_then_longest_wildcard_then_default() {
        let r = routes();
        let at = |n: Option<&str>| r.route(n).copied();
        assert_eq!(at(Some("api.example.com")), Some("api"));
        assert_eq!(at(Some("admin.example.com")), Some("admin"));
        assert_eq!(at(Some("www.example.com")), Some("web"));
        assert_eq!(at(Some("a.b.example.com")), Some("web"));
        assert_eq!(at(Some("x.eu.example.com")), Some("eu"));
        assert_eq!(at(Some("eu.example.com")), Some("web"));
        assert_eq!(at(Some("example.com")), Some("default"), "*. needs a label");
        assert_eq!(at(Some("badexample.com")), Some("default"));
        assert_eq!(at(None), Some("default"));
        let none: Routes<&str> = Routes::new([], None);
        assert_eq!(none.route(Some("a.example")), None);
        assert_eq!(none.route(None), None);
    }

    #[test]
    fn patterns_are_host_names_or_wildcards_of_them() {
        assert_eq!(
            Pattern::parse("A.Example.COM"),
            Some(Pattern::Exact("a.example.com".into()))
        );
        assert_eq!(
            Pattern::parse("*.x.io"),
            Some(Pattern::Wildcard(".x.io".into()))
        );
        for bad in [
            "", "*", "*.", "a.*.com", "**.x", "x..y", "x.", ".x", "a b", "é.fr", "*x.io",
        ] {
            assert_eq!(Pattern::parse(bad), None, "{bad:?}");
        }
        let listed: Vec<String> = routes().iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(
            listed,
            [
                "admin.example.com",
                "api.example.com",
                "*.eu.example.com",
                "*.example.com"
            ]
        );
    }
}
