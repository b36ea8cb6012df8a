//! Route ids to handler functions.

use crate::bindings::berth::plugin::types;
use crate::http::{HttpResult, Request, Response};

/// A request handler: gets the request (with its path params), returns a
/// response. Use `?` freely: host errors and bad input become responses.
pub type Handler = fn(&Request) -> HttpResult;

struct Route {
    id: String,
    method: String,
    path: String,
    handler: Handler,
}

/// The plugin's routes. The host matches method and path (see the `route`
/// record in the WIT) and passes the route id; the router calls the
/// handler registered under that id.
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
    openapi: Option<String>,
}

impl Router {
    /// A router without routes.
    pub fn new() -> Self {
        Router::default()
    }

    /// Serve `method` requests on `path` (a pattern such as
    /// `/hello/{name}` or `/files/{rest...}`) with `handler`, under the
    /// route id `id`.
    pub fn route(mut self, id: &str, method: &str, path: &str, handler: Handler) -> Self {
        self.routes.push(Route {
            id: id.to_string(),
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            handler,
        });
        self
    }

    /// A `GET` route.
    pub fn get(self, id: &str, path: &str, handler: Handler) -> Self {
        self.route(id, "GET", path, handler)
    }

    /// A `POST` route.
    pub fn post(self, id: &str, path: &str, handler: Handler) -> Self {
        self.route(id, "POST", path, handler)
    }

    /// A `PUT` route.
    pub fn put(self, id: &str, path: &str, handler: Handler) -> Self {
        self.route(id, "PUT", path, handler)
    }

    /// A `PATCH` route.
    pub fn patch(self, id: &str, path: &str, handler: Handler) -> Self {
        self.route(id, "PATCH", path, handler)
    }

    /// A `DELETE` route.
    pub fn delete(self, id: &str, path: &str, handler: Handler) -> Self {
        self.route(id, "DELETE", path, handler)
    }

    /// Use this OpenAPI `paths` object (JSON text) instead of the one
    /// generated from the routes.
    pub fn openapi(mut self, paths_json: &str) -> Self {
        self.openapi = Some(paths_json.to_string());
        self
    }

    /// Call the handler for the request's route id, again from the start
    /// if it met a KV conflict and had not acted outside KV (see
    /// [`crate::kv::rerun_on_conflict`]). An id this router does not know
    /// (a host/plugin mismatch) answers 404.
    pub fn dispatch(&self, request: Request) -> Response {
        match self.routes.iter().find(|r| r.id == request.route()) {
            Some(route) => {
                crate::kv::rerun_on_conflict(|| (route.handler)(&request).unwrap_or_else(|e| e))
            }
            None => Response::error(404, &format!("no handler for route `{}`", request.route())),
        }
    }

    pub(crate) fn manifest_routes(&self) -> Vec<types::Route> {
        self.routes
            .iter()
            .map(|r| types::Route {
                id: r.id.clone(),
                method: r.method.clone(),
                path: r.path.clone(),
            })
            .collect()
    }

    /// The OpenAPI `paths` object for these routes: the one given with
    /// [`Router::openapi`], or a minimal one generated from the patterns.
    pub fn openapi_paths(&self) -> String {
        if let Some(given) = &self.openapi {
            return given.clone();
        }
        let mut paths = serde_json::Map::new();
        for r in &self.routes {
            let mut params = Vec::new();
            let mut openapi_path = String::new();
            for segment in r.path.split('/').filter(|s| !s.is_empty()) {
                openapi_path.push('/');
                match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => {
                        let rest = name.ends_with("...");
                        let name = name.trim_end_matches("...");
                        let mut param = serde_json::json!({
                            "name": name, "in": "path", "required": true,
                            "schema": { "type": "string" }
                        });
                        if rest {
                            // OpenAPI 3.0 has no multi-segment parameter.
                            param["description"] = "the rest of the path: zero or more \
                                segments, `/` included"
                                .into();
                            param["x-multi-segment"] = true.into();
                        }
                        params.push(param);
                        openapi_path.push_str(&format!("{{{name}}}"));
                    }
                    None => openapi_path.push_str(segment),
                }
            }
            if openapi_path.is_empty() {
                openapi_path.push('/');
            }
            let methods: Vec<String> = if r.method == "*" {
                ["get", "post", "put", "patch", "delete"]
                    .map(String::from)
                    .to_vec()
            } else {
                vec![r.method.to_ascii_lowercase()]
            };
            let entry = paths
                .entry(openapi_path)
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            let any_method = methods.len() > 1;
            for method in methods {
                // One operation per method: each needs its own id.
                let id = if any_method {
                    format!("{}.{method}", r.id)
                } else {
                    r.id.clone()
                };
                entry[method] = serde_json::json!({
                    "operationId": id,
                    "parameters": params,
                    "responses": { "default": { "description": "the plugin's response" } }
                });
            }
        }
        serde_json::Value::Object(paths).to_string()
    }
}
