//! Route ids to handler functions, in scopes that share an error format,
//! and behind typed guards.

use std::rc::Rc;

use crate::bindings::berth::plugin::types;
use crate::http::{HttpResult, Request, Response};

/// A request handler: gets the request (with its path params), returns a
/// response. Use `?` freely: host errors and bad input become responses in
/// the error format of the route's scope.
pub type Handler = fn(&Request) -> HttpResult;

/// Renders an error body: `(status, message)` to a response in a surface's
/// own format.
pub type Render = fn(u16, &str) -> Response;

/// A guard: what it proves about the caller (their identity, say), or the
/// answer that turns the caller away.
pub type Guard<T> = fn(&Request) -> Result<T, Response>;

/// What routes registered in a [`Router::scope`] share: the format of their
/// error bodies.
#[derive(Clone, Copy, Default)]
pub struct Scope {
    errors: Option<Render>,
}

impl Scope {
    /// A scope that changes nothing of the one it is opened in.
    pub fn new() -> Scope {
        Scope::default()
    }

    /// Render this scope's errors with `render`: host failures and bad
    /// input met with `?`, a guard's refusals, and [`Response::failure`].
    pub fn errors(mut self, render: Render) -> Scope {
        self.errors = Some(render);
        self
    }

    /// This scope inside `outer`: what it leaves unset comes from `outer`.
    fn within(self, outer: Scope) -> Scope {
        Scope {
            errors: self.errors.or(outer.errors),
        }
    }
}

/// A route's handler with its guard, if any, run before it.
type Call = Rc<dyn Fn(&Request) -> HttpResult>;

struct Route {
    id: String,
    method: String,
    path: String,
    call: Call,
    scope: Scope,
}

/// A handler of a route behind a guard of `T`: either a plain [`Handler`],
/// or `fn(&Request, &T) -> HttpResult`, which gets what the guard proved.
/// (`M` tells the two apart; it is inferred.)
pub trait GuardedHandler<T, M>: 'static {
    /// Handle `req` from the caller the guard let through as `who`.
    fn call(&self, req: &Request, who: &T) -> HttpResult;
}

/// The [`GuardedHandler`] marker of a handler that does not need the
/// guard's value.
pub struct Plain;

/// The [`GuardedHandler`] marker of a handler that gets the guard's value.
pub struct Given;

impl<T, F: Fn(&Request) -> HttpResult + 'static> GuardedHandler<T, Plain> for F {
    fn call(&self, req: &Request, _: &T) -> HttpResult {
        self(req)
    }
}

impl<T, F: Fn(&Request, &T) -> HttpResult + 'static> GuardedHandler<T, Given> for F {
    fn call(&self, req: &Request, who: &T) -> HttpResult {
        self(req, who)
    }
}

/// Routes registered behind a guard (see [`Router::guard`]): the guard runs
/// before each of their handlers, and its `Err` answers instead.
pub struct Guarded<T> {
    router: Router,
    check: Guard<T>,
}

impl<T: 'static> Guarded<T> {
    /// Serve `method` requests on `path` with `handler` behind this guard.
    pub fn route<M>(
        mut self,
        id: &str,
        method: &str,
        path: &str,
        handler: impl GuardedHandler<T, M>,
    ) -> Self {
        let check = self.check;
        // The guard runs again with the handler when a conflict makes the
        // call run again: its reads belong to the transaction the
        // handler's writes commit in.
        let call: Call = Rc::new(move |req: &Request| {
            let who = check(req)?;
            handler.call(req, &who)
        });
        self.router.push(id, method, path, call);
        self
    }

    /// A `GET` route.
    pub fn get<M>(self, id: &str, path: &str, handler: impl GuardedHandler<T, M>) -> Self {
        self.route(id, "GET", path, handler)
    }

    /// A `POST` route.
    pub fn post<M>(self, id: &str, path: &str, handler: impl GuardedHandler<T, M>) -> Self {
        self.route(id, "POST", path, handler)
    }

    /// A `PUT` route.
    pub fn put<M>(self, id: &str, path: &str, handler: impl GuardedHandler<T, M>) -> Self {
        self.route(id, "PUT", path, handler)
    }

    /// A `PATCH` route.
    pub fn patch<M>(self, id: &str, path: &str, handler: impl GuardedHandler<T, M>) -> Self {
        self.route(id, "PATCH", path, handler)
    }

    /// A `DELETE` route.
    pub fn delete<M>(self, id: &str, path: &str, handler: impl GuardedHandler<T, M>) -> Self {
        self.route(id, "DELETE", path, handler)
    }

    /// Register the routes `routes` adds behind `check` instead of this
    /// guard (a stricter one, say), then carry on behind this one.
    pub fn guard<U: 'static>(
        self,
        check: Guard<U>,
        routes: impl FnOnce(Guarded<U>) -> Guarded<U>,
    ) -> Self {
        let outer = self.check;
        let router = self.router.guard(check, routes);
        Guarded {
            router,
            check: outer,
        }
    }

    /// Register the routes `routes` adds in `scope`, still behind this
    /// guard, then carry on in the current scope.
    pub fn scope(self, scope: Scope, routes: impl FnOnce(Guarded<T>) -> Guarded<T>) -> Self {
        let check = self.check;
        let router = self
            .router
            .scope(scope, |router| routes(Guarded { router, check }).router);
        Guarded { router, check }
    }
}

/// The plugin's routes. The host matches method and path (see the `route`
/// record in the WIT) and passes the route id; the router calls the
/// handler registered under that id.
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
    openapi: Option<String>,
    descriptions: Vec<&'static str>,
    /// The scope routes are registered in now.
    scope: Scope,
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
        self.push(id, method, path, Rc::new(handler));
        self
    }

    fn push(&mut self, id: &str, method: &str, path: &str, call: Call) {
        self.routes.push(Route {
            id: id.to_string(),
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            call,
            scope: self.scope,
        });
    }

    /// Register the routes `routes` adds in `scope` (opened inside the
    /// current one), then carry on in the current scope.
    ///
    /// ```no_run
    /// # use berth_sdk::{HttpResult, Request, Response, Router, Scope};
    /// # fn fail(status: u16, message: &str) -> Response { Response::error(status, message) }
    /// # fn login(req: &Request) -> HttpResult { Ok(Response::new(200)) }
    /// # fn status(req: &Request) -> HttpResult { Ok(Response::new(200)) }
    /// let router = Router::new().scope(Scope::new().errors(fail), |r| {
    ///     r.post("login", "/login", login).get("status", "/status", status)
    /// });
    /// ```
    pub fn scope(mut self, scope: Scope, routes: impl FnOnce(Router) -> Router) -> Self {
        let inner = scope.within(self.scope);
        let outer = std::mem::replace(&mut self.scope, inner);
        let mut router = routes(self);
        router.scope = outer;
        router
    }

    /// Register the routes `routes` adds behind the guard `check`, then
    /// carry on without it. `check` runs before each of their handlers:
    /// its `Err` answers the request instead (rendered in the scope's error
    /// format if it is a [`Response::failure`]); its `Ok` value is what a
    /// handler of the form `fn(&Request, &T) -> HttpResult` gets.
    ///
    /// ```no_run
    /// # use berth_sdk::{HttpResult, Request, Response, Router};
    /// struct User(String);
    ///
    /// fn signed_in(req: &Request) -> Result<User, Response> {
    ///     let name = req.header("x-user").ok_or_else(|| Response::failure(401, "sign in"))?;
    ///     Ok(User(name.to_string()))
    /// }
    ///
    /// fn whoami(_: &Request, me: &User) -> HttpResult {
    ///     Ok(Response::text(200, &me.0))
    /// }
    /// # fn list(req: &Request) -> HttpResult { Ok(Response::new(200)) }
    ///
    /// let router = Router::new().guard(signed_in, |r| {
    ///     r.get("me", "/me", whoami).get("list", "/things", list)
    /// });
    /// ```
    pub fn guard<T: 'static>(
        self,
        check: Guard<T>,
        routes: impl FnOnce(Guarded<T>) -> Guarded<T>,
    ) -> Self {
        routes(Guarded {
            router: self,
            check,
        })
        .router
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

    /// Describe routes in OpenAPI terms, for `/_berth/openapi.json`.
    /// `doc` is JSON text (usually `include_str!("../openapi.json")`):
    ///
    /// - `schemas`: named OpenAPI schema objects, referred to as
    ///   `{"$ref": "#/components/schemas/NAME"}`;
    /// - `error`: the schema of the error bodies of this document's
    ///   operations, documented as each one's `default` response;
    /// - `operations`: route id → OpenAPI operation fields (`summary`,
    ///   query `parameters`, `requestBody`, `responses`, ...) laid over the
    ///   operation generated from the route. Shorthands: a response
    ///   `{"schema": S}` is a JSON response, a 4xx or 5xx response without
    ///   content has the `error` body, and `"body": S` is a required JSON
    ///   request body.
    ///
    /// Call it once per document: a plugin serving two surfaces with two
    /// error formats gives one document for each.
    /// [`Router::check_description`] says whether they match the routes.
    pub fn describe(mut self, doc: &'static str) -> Self {
        self.descriptions.push(doc);
        self
    }

    /// Whether the documents given to [`Router::describe`] are readable,
    /// describe every route once, only routes this router has, and name
    /// no schema twice.
    pub fn check_description(&self) -> Result<(), String> {
        let docs = self.description_docs()?;
        if docs.is_empty() {
            return Err("no description given".into());
        }
        let mut problems = Vec::new();
        let mut described: Vec<&String> = Vec::new();
        let mut schemas: Vec<&String> = Vec::new();
        for doc in &docs {
            for id in doc["operations"]
                .as_object()
                .into_iter()
                .flat_map(|o| o.keys())
            {
                if described.contains(&id) {
                    problems.push(format!("route `{id}` is described twice"));
                } else if !self.routes.iter().any(|r| &r.id == id) {
                    problems.push(format!("route `{id}` is described but does not exist"));
                }
                described.push(id);
            }
            for name in doc["schemas"]
                .as_object()
                .into_iter()
                .flat_map(|o| o.keys())
            {
                if schemas.contains(&name) {
                    problems.push(format!("schema `{name}` is defined twice"));
                }
                schemas.push(name);
            }
        }
        for r in &self.routes {
            if !described.contains(&&r.id) {
                problems.push(format!("route `{}` has no description", r.id));
            }
        }
        for doc in &docs {
            let mut refs = Vec::new();
            schema_refs(doc, &mut refs);
            for name in refs {
                if !schemas.iter().any(|s| s.as_str() == name) {
                    problems.push(format!("`$ref` to schema `{name}`, which is not defined"));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    fn description_docs(&self) -> Result<Vec<serde_json::Value>, String> {
        self.descriptions
            .iter()
            .map(|text| match serde_json::from_str(text) {
                Ok(doc @ serde_json::Value::Object(_)) => Ok(doc),
                Ok(_) => Err("a description is not a JSON object".to_string()),
                Err(e) => Err(format!("a description is not JSON: {e}")),
            })
            .collect()
    }

    /// Call the handler for the request's route id, again from the start
    /// if it met a KV conflict and had not acted outside KV (see
    /// [`crate::kv::rerun_on_conflict`]). An id this router does not know
    /// (a host/plugin mismatch) answers 404.
    pub fn dispatch(&self, request: Request) -> Response {
        let Some(route) = self.routes.iter().find(|r| r.id == request.route()) else {
            return Response::error(404, &format!("no handler for route `{}`", request.route()));
        };
        let response =
            crate::kv::rerun_on_conflict(|| (route.call)(&request).unwrap_or_else(|e| e));
        response.rendered(route.scope.errors.unwrap_or(Response::error))
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

    /// The OpenAPI fragment for these routes (JSON text): the `paths`
    /// object given with [`Router::openapi`]; or `{"paths", "components"}`,
    /// generated from the patterns with the description given to
    /// [`Router::describe`] laid over it.
    pub fn openapi_paths(&self) -> String {
        if let Some(given) = &self.openapi {
            return given.clone();
        }
        // An unreadable description documents nothing rather than failing
        // the manifest; `check_description` is where it is caught.
        let docs = self.description_docs().unwrap_or_default();
        let mut schemas = serde_json::Map::new();
        for doc in &docs {
            schemas.extend(doc["schemas"].as_object().cloned().unwrap_or_default());
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
                let mut op = serde_json::json!({
                    "operationId": id,
                    "parameters": params,
                    "responses": { "default": { "description": "the plugin's response" } }
                });
                if let Some((doc, described)) = docs
                    .iter()
                    .find_map(|doc| Some((doc, doc["operations"].get(&r.id)?)))
                {
                    describe_operation(&mut op, described, &doc["error"]);
                }
                entry[method] = op;
            }
        }
        serde_json::json!({
            "paths": paths,
            "components": { "schemas": schemas },
        })
        .to_string()
    }
}

/// Lay `described` (an entry of the description's `operations`) over the
/// generated operation `op`, expanding the shorthands.
fn describe_operation(
    op: &mut serde_json::Value,
    described: &serde_json::Value,
    error: &serde_json::Value,
) {
    use serde_json::{Value, json};
    let json_content = |schema: &Value| json!({ "application/json": { "schema": schema } });
    if !error.is_null() {
        op["responses"]["default"] =
            json!({ "description": "an error", "content": json_content(error) });
    }
    let Some(fields) = described.as_object() else {
        return;
    };
    for (key, value) in fields {
        match key.as_str() {
            "body" => {
                op["requestBody"] = json!({ "required": true, "content": json_content(value) });
            }
            "parameters" => {
                if let (Some(all), Some(more)) = (op["parameters"].as_array_mut(), value.as_array())
                {
                    all.extend(more.iter().cloned());
                }
            }
            "responses" => {
                for (status, response) in value.as_object().into_iter().flatten() {
                    let mut response = response.clone();
                    if let Some(schema) = response.as_object_mut().and_then(|r| r.remove("schema"))
                    {
                        response["content"] = json_content(&schema);
                    }
                    if response.get("description").is_none() {
                        response["description"] = format!("status {status}").into();
                    }
                    let failure = status.starts_with(['4', '5']);
                    if failure && response.get("content").is_none() && !error.is_null() {
                        response["content"] = json_content(error);
                    }
                    op["responses"][status] = response;
                }
            }
            _ => op[key] = value.clone(),
        }
    }
}

/// The names of the component schemas `value` refers to
/// (`#/components/schemas/NAME`), at any depth.
fn schema_refs<'v>(value: &'v serde_json::Value, out: &mut Vec<&'v str>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v.as_str()) {
                    ("$ref", Some(target)) => {
                        if let Some(pointer) = target.strip_prefix("#/components/schemas/") {
                            // `NAME`, or a pointer into it (`NAME/properties/x`).
                            out.push(pointer.split('/').next().unwrap_or(pointer));
                        }
                    }
                    _ => schema_refs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| schema_refs(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Response;
    use serde_json::json;

    fn ok(_: &Request) -> HttpResult {
        Ok(Response::json(200, &json!({})))
    }

    const DOC: &str = r##"{
        "schemas": { "Thing": { "type": "object", "required": ["id"] } },
        "error": { "type": "object", "required": ["error"] },
        "operations": {
            "things.get": {
                "summary": "one thing",
                "parameters": [{ "name": "full", "in": "query", "schema": { "type": "boolean" } }],
                "responses": { "200": { "schema": { "$ref": "#/components/schemas/Thing" } } }
            },
            "things.put": { "body": { "$ref": "#/components/schemas/Thing" }, "responses": { "204": {}, "409": {} } }
        }
    }"##;

    fn router() -> Router {
        Router::new()
            .get("things.get", "/things/{id}", ok)
            .put("things.put", "/things/{id}", ok)
            .describe(DOC)
    }

    #[test]
    fn a_description_is_laid_over_the_generated_operations() {
        let doc: serde_json::Value = serde_json::from_str(&router().openapi_paths()).unwrap();
        let get = &doc["paths"]["/things/{id}"]["get"];
        assert_eq!(get["operationId"], "things.get");
        assert_eq!(get["summary"], "one thing");
        let params: Vec<&str> = get["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            params,
            ["id", "full"],
            "path parameters first, then the described ones"
        );
        assert_eq!(
            get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Thing"
        );
        assert_eq!(get["responses"]["200"]["description"], "status 200");
        assert_eq!(
            get["responses"]["default"]["content"]["application/json"]["schema"]["required"],
            json!(["error"])
        );
        let put = &doc["paths"]["/things/{id}"]["put"];
        assert_eq!(put["requestBody"]["required"], true);
        assert!(put["requestBody"]["content"]["application/json"]["schema"].is_object());
        assert_eq!(put["responses"]["204"]["description"], "status 204");
        assert!(put["responses"]["204"].get("content").is_none());
        assert_eq!(
            put["responses"]["409"]["content"], get["responses"]["default"]["content"],
            "a failure without content has the error body"
        );
        assert_eq!(
            doc["components"]["schemas"]["Thing"]["required"],
            json!(["id"])
        );
    }

    #[test]
    fn a_description_must_match_the_routes() {
        assert_eq!(router().check_description(), Ok(()));
        let more = router().post("things.make", "/things", ok);
        let why = more.check_description().unwrap_err();
        assert_eq!(why, "route `things.make` has no description");
        let fewer = Router::new()
            .get("things.get", "/things/{id}", ok)
            .describe(DOC);
        let why = fewer.check_description().unwrap_err();
        assert_eq!(why, "route `things.put` is described but does not exist");
        let twice = router().describe(DOC).check_description().unwrap_err();
        assert!(
            twice.contains("route `things.get` is described twice"),
            "{twice}"
        );
        assert!(twice.contains("schema `Thing` is defined twice"), "{twice}");
        assert!(Router::new().describe("[]").check_description().is_err());
        assert!(Router::new().check_description().is_err());
        const DANGLING: &str = r##"{
            "operations": { "other.get": { "responses": { "200": {
                "schema": { "$ref": "#/components/schemas/Nowhere/properties/x" } } } } }
        }"##;
        let dangling = router().get("other.get", "/other", ok).describe(DANGLING);
        assert_eq!(
            dangling.check_description(),
            Err("`$ref` to schema `Nowhere`, which is not defined".to_string())
        );
    }

    #[test]
    fn each_document_has_its_own_error_body() {
        const OTHER: &str = r##"{
            "error": { "type": "object", "required": ["err"] },
            "operations": { "other.get": { "responses": { "404": {} } } }
        }"##;
        let two = router().get("other.get", "/other", ok).describe(OTHER);
        assert_eq!(two.check_description(), Ok(()));
        let doc: serde_json::Value = serde_json::from_str(&two.openapi_paths()).unwrap();
        let body = |path: &str, method: &str, status: &str| {
            doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
                ["required"]
                .clone()
        };
        assert_eq!(body("/other", "get", "404"), json!(["err"]));
        assert_eq!(body("/other", "get", "default"), json!(["err"]));
        assert_eq!(body("/things/{id}", "get", "default"), json!(["error"]));
    }

    #[test]
    fn without_a_description_the_routes_are_still_documented() {
        let doc: serde_json::Value = serde_json::from_str(
            &Router::new()
                .get("things.get", "/things/{id}", ok)
                .openapi_paths(),
        )
        .unwrap();
        assert_eq!(
            doc["paths"]["/things/{id}"]["get"]["operationId"],
            "things.get"
        );
        assert_eq!(doc["components"]["schemas"], json!({}));
    }

    fn request(route: &str, headers: &[(&str, &str)]) -> Request {
        Request::from(types::Request {
            id: "test-1".into(),
            method: "GET".into(),
            path: "/".into(),
            route: route.into(),
            params: Vec::new(),
            query: vec![("n".into(), "x".into())],
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
            client: "127.0.0.1:1".into(),
        })
    }

    fn body(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    fn ours(status: u16, message: &str) -> Response {
        Response::json(status, &json!({ "err": message, "ours": true }))
    }

    struct User(String);

    fn signed_in(req: &Request) -> Result<User, Response> {
        match req.header("user") {
            Some(name) => Ok(User(name.to_string())),
            None => Err(Response::failure(401, "sign in first")),
        }
    }

    fn admin(req: &Request) -> Result<User, Response> {
        let user = signed_in(req)?;
        if user.0 == "root" {
            Ok(user)
        } else {
            Err(Response::failure(403, "admins only"))
        }
    }

    fn whoami(_: &Request, user: &User) -> HttpResult {
        Ok(Response::json(200, &json!({ "user": user.0 })))
    }

    fn bad_query(req: &Request) -> HttpResult {
        let n: Option<u32> = req.query_as("n")?;
        Ok(Response::json(200, &json!({ "n": n })))
    }

    fn host_error(_: &Request) -> HttpResult {
        Err(crate::Error::Unavailable("storage is away".into()))?
    }

    fn scoped() -> Router {
        Router::new()
            .get("plain", "/plain", bad_query)
            .scope(Scope::new().errors(ours), |r| {
                r.get("query", "/query", bad_query)
                    .get("host", "/host", host_error)
                    .guard(signed_in, |r| {
                        r.get("me", "/me", whoami)
                            .get("me.query", "/me/query", bad_query)
                            .guard(admin, |r| r.get("root", "/root", whoami))
                    })
            })
            .get("after", "/after", bad_query)
    }

    #[test]
    fn a_scope_renders_its_errors_and_the_sdk_conversions_use_it() {
        let r = scoped().dispatch(request("query", &[]));
        assert_eq!((r.status, body(&r)["ours"].clone()), (400, json!(true)));
        let host = scoped().dispatch(request("host", &[]));
        assert_eq!(host.status, 503);
        assert_eq!(body(&host)["ours"], true);
        assert!(
            host.headers
                .iter()
                .any(|(k, v)| k == "retry-after" && v == "1")
        );
        for outside in ["plain", "after"] {
            let r = scoped().dispatch(request(outside, &[]));
            assert_eq!(r.status, 400);
            assert!(
                body(&r)["error"].is_string(),
                "the default format outside the scope"
            );
        }
    }

    #[test]
    fn a_guard_turns_callers_away_or_gives_handlers_their_identity() {
        let away = scoped().dispatch(request("me", &[]));
        assert_eq!(
            (away.status, body(&away)["err"].clone()),
            (401, json!("sign in first"))
        );
        let me = scoped().dispatch(request("me", &[("user", "ann")]));
        assert_eq!((me.status, body(&me)["user"].clone()), (200, json!("ann")));
        let not_root = scoped().dispatch(request("root", &[("user", "ann")]));
        assert_eq!(
            not_root.status, 403,
            "an inner guard replaces the outer one"
        );
        let root = scoped().dispatch(request("root", &[("user", "root")]));
        assert_eq!(body(&root)["user"], "root");
        let plain = scoped().dispatch(request("me.query", &[("user", "ann")]));
        assert_eq!(
            (plain.status, body(&plain)["ours"].clone()),
            (400, json!(true)),
            "a plain handler behind a guard, erring in the scope's format"
        );
        let away = scoped().dispatch(request("me.query", &[]));
        assert_eq!(away.status, 401, "its guard runs first");
    }
}
