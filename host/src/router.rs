//! The route table built from every mounted plugin's manifest.
//!
//! Patterns are `/` separated segments: literal text, `{name}` (one
//! segment) or a final `{name...}` (the rest). A trailing slash is ignored
//! on both sides, so `/service/` and `/service` are the same route. When
//! several patterns match, the most specific wins: segment by segment,
//! literal beats parameter beats rest.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

impl Segment {
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 0,
            Segment::Param(_) => 1,
            Segment::Rest(_) => 2,
        }
    }

    /// Same shape: literals with the same text, or two captures of one kind.
    fn same_shape(&self, other: &Segment) -> bool {
        match (self, other) {
            (Segment::Literal(a), Segment::Literal(b)) => a == b,
            (a, b) => a.rank() == b.rank() && a.rank() > 0,
        }
    }
}

/// A parsed route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

impl Pattern {
    /// Parse a pattern, saying what is wrong with a bad one.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("route path `{text}` must start with `/`"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut segments = Vec::new();
        let mut names = Vec::new();
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(inner) => {
                    let (name, is_rest) = match inner.strip_suffix("...") {
                        Some(name) => (name, true),
                        None => (inner, false),
                    };
                    let valid = !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if !valid {
                        return Err(format!("route path `{text}` has a bad parameter `{part}`"));
                    }
                    if names.contains(&name) {
                        return Err(format!(
                            "route path `{text}` names parameter `{name}` twice"
                        ));
                    }
                    names.push(name);
                    if is_rest {
                        if i + 1 != parts.len() {
                            return Err(format!(
                                "route path `{text}`: `{part}` must be the last segment"
                            ));
                        }
                        Segment::Rest(name.to_string())
                    } else {
                        Segment::Param(name.to_string())
                    }
                }
                None if part.is_empty() => {
                    return Err(format!("route path `{text}` has an empty segment"));
                }
                None if part.contains(['{', '}']) => {
                    return Err(format!(
                        "route path `{text}`: a parameter must be a whole segment, not `{part}`"
                    ));
                }
                None => Segment::Literal(part.to_string()),
            };
            segments.push(segment);
        }
        Ok(Pattern {
            text: text.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The prefix this pattern is the fallback of, for a route of any
    /// method (`*`): literal segments then a final `{rest...}`, such as
    /// `/api/v1/{rest...}` for `/api/v1`. Such a route answers whatever no
    /// more specific route takes under its prefix, in its plugin's format.
    pub fn fallback_prefix(&self) -> Option<String> {
        let (last, literals) = self.segments.split_last()?;
        if !matches!(last, Segment::Rest(_)) {
            return None;
        }
        let mut prefix = String::new();
        for segment in literals {
            let Segment::Literal(text) = segment else {
                return None;
            };
            prefix.push('/');
            prefix.push_str(text);
        }
        Some(if prefix.is_empty() {
            "/".into()
        } else {
            prefix
        })
    }

    /// Whether this pattern starts with the literal segment `first`.
    pub fn starts_with_literal(&self, first: &str) -> bool {
        matches!(self.segments.first(), Some(Segment::Literal(s)) if s == first)
    }

    /// Whether both patterns match exactly the same paths.
    pub fn same_shape(&self, other: &Pattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| a.same_shape(b))
    }

    fn specificity(&self, other: &Pattern) -> Ordering {
        for (a, b) in self.segments.iter().zip(&other.segments) {
            match a.rank().cmp(&b.rank()) {
                Ordering::Equal => continue,
                unequal => return unequal,
            }
        }
        // Longer patterns first: `/a/{b}` before `/a`.
        other.segments.len().cmp(&self.segments.len())
    }

    /// Whether a path's segments match, without capturing anything.
    fn fits(&self, parts: &[&str]) -> bool {
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Rest(_) => return true,
                Segment::Literal(text) => {
                    if parts.get(i) != Some(&text.as_str()) {
                        return false;
                    }
                }
                Segment::Param(_) => {
                    if i >= parts.len() {
                        return false;
                    }
                }
            }
        }
        parts.len() == self.segments.len()
    }

    /// The parameters captured from a path that `fits`; `Err` names a
    /// parameter whose percent-decoded bytes are not UTF-8.
    fn params(&self, parts: &[&str]) -> Result<Vec<(String, String)>, String> {
        let mut params = Vec::new();
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Rest(name) => {
                    params.push((name.clone(), parts.get(i..).unwrap_or_default().join("/")));
                }
                Segment::Param(name) => {
                    let value = String::from_utf8(percent_decode_bytes(parts[i]))
                        .map_err(|_| name.clone())?;
                    params.push((name.clone(), value));
                }
                Segment::Literal(_) => {}
            }
        }
        Ok(params)
    }
}

/// Split a request path into segments, ignoring one trailing slash.
fn split(path: &str) -> Vec<&str> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    }
}

/// Percent-decode a path segment (invalid escapes are kept as they are).
pub fn percent_decode(input: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(input)).into_owned()
}

/// Percent-decode to bytes (invalid escapes are kept as they are).
fn percent_decode_bytes(input: &str) -> Vec<u8> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// One route of one plugin.
pub struct Route<T> {
    pub method: String,
    pub pattern: Pattern,
    pub id: String,
    pub target: Arc<T>,
}

/// The result of looking a request up.
pub enum Found<'a, T> {
    Route {
        route: &'a Route<T>,
        params: Vec<(String, String)>,
    },
    /// The path exists, but not for this method.
    MethodNotAllowed {
        allow: Vec<String>,
    },
    /// A route matched, but the named parameter does not decode to UTF-8.
    BadParam(String),
    NotFound,
}

/// All routes, most specific first, indexed by their first segment.
pub struct Table<T> {
    routes: Vec<Route<T>>,
    /// For each literal first segment of a pattern, the positions in
    /// `routes` of the routes a path starting with it may match: those
    /// starting with it and those starting with a parameter, in order.
    by_first: HashMap<String, Vec<usize>>,
    /// The positions of the routes that start with a parameter (or are
    /// `/`): all a path with any other first segment may match.
    others: Vec<usize>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table::new(Vec::new())
    }
}

impl<T> Table<T> {
    pub fn new(mut routes: Vec<Route<T>>) -> Table<T> {
        routes.sort_by(|a, b| a.pattern.specificity(&b.pattern));
        let mut by_first: HashMap<String, Vec<usize>> = HashMap::new();
        let mut others = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            match route.pattern.segments.first() {
                Some(Segment::Literal(first)) => by_first.entry(first.clone()).or_default().push(i),
                _ => others.push(i),
            }
        }
        for under in by_first.values_mut() {
            under.extend(&others);
            under.sort_unstable();
        }
        Table {
            routes,
            by_first,
            others,
        }
    }

    pub fn routes(&self) -> &[Route<T>] {
        &self.routes
    }

    pub fn find(&self, method: &str, path: &str) -> Found<'_, T> {
        let parts = split(path);
        let candidates = parts
            .first()
            .and_then(|first| self.by_first.get(*first))
            .unwrap_or(&self.others);
        let mut allow: Vec<String> = Vec::new();
        for &next in candidates {
            let route = &self.routes[next];
            if !route.pattern.fits(&parts) {
                continue;
            }
            // HEAD is served by the GET route when there is no HEAD one
            // (the host then sends the head without the body).
            let head_as_get = method == "HEAD" && route.method == "GET";
            if route.method == method || route.method == "*" || head_as_get {
                // A more specific pattern for another method does not
                // shadow this one: keep looking only if methods differ.
                return match route.pattern.params(&parts) {
                    Ok(params) => Found::Route { route, params },
                    Err(name) => Found::BadParam(name),
                };
            }
            if !allow.contains(&route.method) {
                allow.push(route.method.clone());
            }
        }
        if allow.is_empty() {
            Found::NotFound
        } else {
            allow.sort();
            Found::MethodNotAllowed { allow }
        }
    }
}

/// Whether two routes would take the same requests.
pub fn conflicts(method_a: &str, a: &Pattern, method_b: &str, b: &Pattern) -> bool {
    let methods_overlap = method_a == method_b || method_a == "*" || method_b == "*";
    methods_overlap && a.same_shape(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str, &str)]) -> Table<()> {
        Table::new(
            routes
                .iter()
                .map(|(m, p, id)| Route {
                    method: m.to_string(),
                    pattern: Pattern::parse(p).unwrap(),
                    id: id.to_string(),
                    target: Arc::new(()),
                })
                .collect(),
        )
    }

    fn id(t: &Table<()>, method: &str, path: &str) -> String {
        match t.find(method, path) {
            Found::Route { route, params } => {
                let params: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{} {}", route.id, params.join(","))
            }
            Found::MethodNotAllowed { allow } => format!("405 {}", allow.join(",")),
            Found::BadParam(name) => format!("400 {name}"),
            Found::NotFound => "404".to_string(),
        }
    }

    #[test]
    fn the_most_specific_prefix_fallback_answers_what_no_route_takes() {
        let t = table(&[
            ("*", "/api/{rest...}", "portainer"),
            ("*", "/api/v1/{rest...}", "cikit"),
            ("*", "/api/app/v1/{rest...}", "cloud"),
            ("GET", "/api/users", "users"),
            ("*", "/api/endpoints/{id}/docker/{path...}", "proxy"),
        ]);
        assert_eq!(id(&t, "GET", "/api/users"), "users ");
        assert_eq!(id(&t, "DELETE", "/api/users"), "portainer rest=users");
        assert_eq!(id(&t, "GET", "/api/v1/nothing"), "cikit rest=nothing");
        assert_eq!(id(&t, "POST", "/api/app/v1/x/y"), "cloud rest=x/y");
        assert_eq!(id(&t, "GET", "/api/status"), "portainer rest=status");
        assert_eq!(id(&t, "GET", "/elsewhere"), "404");
        let prefix = |p: &str| Pattern::parse(p).unwrap().fallback_prefix();
        assert_eq!(prefix("/api/v1/{rest...}").as_deref(), Some("/api/v1"));
        assert_eq!(prefix("/{rest...}").as_deref(), Some("/"));
        assert_eq!(prefix("/api/endpoints/{id}/docker/{path...}"), None);
        assert_eq!(prefix("/api/users"), None);
    }

    #[test]
    fn head_is_served_by_get_and_parameters_must_be_utf8() {
        let t = table(&[
            ("GET", "/hello/{name}", "greet"),
            ("HEAD", "/own", "own-head"),
            ("GET", "/own", "own-get"),
        ]);
        assert_eq!(id(&t, "HEAD", "/hello/ann"), "greet name=ann");
        assert_eq!(id(&t, "HEAD", "/own"), "own-head ");
        assert_eq!(id(&t, "GET", "/hello/%C3%A9"), "greet name=\u{e9}");
        for bad in ["%ff", "%fe", "%C0", "a%C3"] {
            assert_eq!(id(&t, "GET", &format!("/hello/{bad}")), "400 name", "{bad}");
        }
    }

    #[test]
    fn literal_beats_param_beats_rest() {
        let t = table(&[
            ("GET", "/d/{rest...}", "rest"),
            ("GET", "/d/{host}", "param"),
            ("GET", "/d/list", "literal"),
            ("GET", "/", "root"),
        ]);
        assert_eq!(id(&t, "GET", "/d/list"), "literal ");
        assert_eq!(id(&t, "GET", "/d/h%20x"), "param host=h x");
        assert_eq!(
            id(&t, "GET", "/d/h/containers/json"),
            "rest rest=h/containers/json"
        );
        assert_eq!(id(&t, "GET", "/"), "root ");
        assert_eq!(id(&t, "GET", "/nope"), "404");
    }

    #[test]
    fn literal_and_parameter_first_segments_keep_one_order() {
        let t = table(&[
            ("GET", "/{kind}/list", "kind-list"),
            ("POST", "/{kind}/{id}", "kind-id"),
            ("GET", "/d/{x}", "d-x"),
            ("PUT", "/d/list", "d-list"),
            ("GET", "/{all...}", "all"),
        ]);
        // A literal first segment beats a parameter, and the routes that
        // start with a parameter still answer what the `/d/` ones do not.
        assert_eq!(id(&t, "GET", "/d/list"), "d-x x=list");
        assert_eq!(id(&t, "PUT", "/d/list"), "d-list ");
        assert_eq!(id(&t, "POST", "/d/list"), "kind-id kind=d,id=list");
        assert_eq!(id(&t, "GET", "/e/list"), "kind-list kind=e");
        assert_eq!(id(&t, "DELETE", "/d/list"), "405 GET,POST,PUT");
        assert_eq!(id(&t, "GET", "/"), "all all=");
        assert_eq!(id(&t, "GET", "/e/f/g"), "all all=e/f/g");
    }

    #[test]
    fn trailing_slashes_are_ignored_and_methods_give_405() {
        let t = table(&[
            ("GET", "/service/", "list"),
            ("POST", "/service", "create"),
            ("*", "/any", "any"),
        ]);
        assert_eq!(id(&t, "GET", "/service"), "list ");
        assert_eq!(id(&t, "POST", "/service/"), "create ");
        assert_eq!(id(&t, "DELETE", "/service"), "405 GET,POST");
        assert_eq!(id(&t, "PATCH", "/any"), "any ");
    }

    #[test]
    fn bad_patterns_are_refused() {
        for (p, why) in [
            ("hello", "must start with `/`"),
            ("/a//b", "empty segment"),
            ("/a/{}", "bad parameter"),
            ("/a/{x}/{x}", "twice"),
            ("/a/{r...}/b", "last segment"),
            ("/a/x{y}", "whole segment"),
        ] {
            let err = Pattern::parse(p).unwrap_err();
            assert!(err.contains(why), "{p}: {err}");
        }
    }

    #[test]
    fn conflicts_ignore_parameter_names() {
        let a = Pattern::parse("/hello/{name}").unwrap();
        let b = Pattern::parse("/hello/{who}/").unwrap();
        let c = Pattern::parse("/hello/world").unwrap();
        assert!(conflicts("GET", &a, "GET", &b));
        assert!(conflicts("*", &a, "POST", &b));
        assert!(!conflicts("GET", &a, "POST", &b));
        assert!(!conflicts("GET", &a, "GET", &c));
    }
}
