"""Route ids to handlers, in scopes that share an error format, behind
guards.

A handler takes the `Request` (and, behind a guard, what the guard
returned) and returns a `Response`; raising `Failure` answers in the
scope's error format, and so does a host refusal (`HostError`: 503 with
`Retry-After` for a conflict or an unavailable host, 400 for an argument
the host refused, 500 for a capability not granted)."""

import json
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import kv
from ._host import HostError


class Failure(Exception):
    """Answer `status` with `message` in the route's error format."""

    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Response:
    """An HTTP response: status, headers in order, body bytes."""

    def __init__(self, status: int = 200, body: bytes = b"", headers=None):
        self.status = status
        self.headers: List[Tuple[str, str]] = list(headers or [])
        self.body = body

    @staticmethod
    def json(status: int, value: Any) -> "Response":
        body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        return Response(status, body, [("content-type", "application/json")])

    @staticmethod
    def text(status: int, text: str) -> "Response":
        return Response(status, text.encode(), [("content-type", "text/plain; charset=utf-8")])

    @staticmethod
    def error(status: int, message: str) -> "Response":
        """`{"error": message}`, the default error format."""
        return Response.json(status, {"error": message})

    def header(self, name: str, value: str) -> "Response":
        """Set `name` to `value`, replacing its values."""
        self.headers = [(n, v) for n, v in self.headers if n.lower() != name.lower()]
        self.headers.append((name, value))
        return self

    def json_body(self) -> Any:
        return json.loads(self.body)


class Request:
    """One request routed to this plugin (the host matched its route)."""

    def __init__(self, id, method, path, route, params, query, headers, body, client):
        self.id = id
        self.method = method
        self.path = path
        self.route = route
        self.params = dict(params)
        self.query_pairs = list(query)
        self.headers = list(headers)
        self.body = bytes(body)
        self.client = client

    def param(self, name: str) -> str:
        """The path parameter `name` (400 if the route has none such)."""
        if name not in self.params:
            raise Failure(400, f"missing path parameter `{name}`")
        return self.params[name]

    def query(self, name: str) -> Optional[str]:
        """The first value of query parameter `name`."""
        return next((v for k, v in self.query_pairs if k == name), None)

    def header(self, name: str) -> Optional[str]:
        """The first value of header `name` (any case)."""
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def json(self) -> Any:
        """The body as JSON (400 if it is not)."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as e:
            raise Failure(400, f"invalid JSON body: {e}") from None


def _render_host_error(e: HostError) -> Failure:
    if e.transient:
        return Failure(503, str(e), {"retry-after": "1"})
    return Failure(400 if e.kind == "invalid" else 500, str(e))


class Scope:
    """What routes opened in `Router.scope` share: their error format,
    `render(status, message) -> Response`."""

    def __init__(self, errors: Optional[Callable[[int, str], Response]] = None):
        self.errors = errors


class _Route:
    def __init__(self, id, method, path, call, render):
        self.id, self.method, self.path = id, method, path
        self.call, self.render = call, render


class Router:
    """The plugin's routes, by id; the host matches method and path."""

    def __init__(self):
        self.routes: List[_Route] = []
        self.descriptions: List[dict] = []
        self._render = Response.error
        self._guard = None

    def route(self, id: str, method: str, path: str, handler=None):
        """Serve `method` on `path` (`/things/{id}`, `/files/{rest...}`)
        with `handler`; usable as a decorator."""

        def register(handler):
            guard = self._guard
            if guard is None:
                call = handler
            else:
                def call(req, guard=guard, handler=handler):
                    return handler(req, guard(req))
            self.routes.append(_Route(id, method.upper(), path, call, self._render))
            return handler

        return register if handler is None else register(handler)

    def get(self, id, path, handler=None):
        return self.route(id, "GET", path, handler)

    def post(self, id, path, handler=None):
        return self.route(id, "POST", path, handler)

    def put(self, id, path, handler=None):
        return self.route(id, "PUT", path, handler)

    def patch(self, id, path, handler=None):
        return self.route(id, "PATCH", path, handler)

    def delete(self, id, path, handler=None):
        return self.route(id, "DELETE", path, handler)

    def scope(self, scope: Scope, routes: Callable[["Router"], Any]) -> "Router":
        """Register what `routes(self)` adds with `scope`'s error format."""
        outer = self._render
        self._render = scope.errors or outer
        try:
            routes(self)
        finally:
            self._render = outer
        return self

    def guard(self, check: Callable[[Request], Any], routes: Callable[["Router"], Any]) -> "Router":
        """Register what `routes(self)` adds behind `check`: it runs before
        each of their handlers, which get its answer as their second
        argument; raising `Failure` turns the caller away."""
        outer = self._guard
        self._guard = check
        try:
            routes(self)
        finally:
            self._guard = outer
        return self

    def dispatch(self, request: Request) -> Response:
        """Call the handler of the request's route, again from the start
        after a conflict (see `kv.rerun_on_conflict`)."""
        route = next((r for r in self.routes if r.id == request.route), None)
        if route is None:
            return Response.error(404, f"no handler for route `{request.route}`")

        def run() -> Response:
            try:
                return route.call(request)
            except HostError as e:
                failure = _render_host_error(e)
            except Failure as e:
                failure = e
            answer = route.render(failure.status, failure.message)
            for name, value in failure.headers.items():
                answer.header(name, value)
            return answer

        return kv.rerun_on_conflict(run)

    # --- OpenAPI ---------------------------------------------------------

    def describe(self, doc: dict) -> "Router":
        """Describe routes in OpenAPI terms (the Rust SDK's format:
        `schemas`, `error`, `operations` by route id)."""
        self.descriptions.append(doc)
        return self

    def check_description(self) -> List[str]:
        """What is wrong with the descriptions: routes undescribed,
        described twice or unknown, schemas defined twice or missing."""
        if not self.descriptions:
            return ["no description given"]
        problems, described, schemas = [], [], []
        ids = [r.id for r in self.routes]
        for doc in self.descriptions:
            for id in doc.get("operations", {}):
                if id in described:
                    problems.append(f"route `{id}` is described twice")
                elif id not in ids:
                    problems.append(f"route `{id}` is described but does not exist")
                described.append(id)
            for name in doc.get("schemas", {}):
                if name in schemas:
                    problems.append(f"schema `{name}` is defined twice")
                schemas.append(name)
        for id in ids:
            if id not in described:
                problems.append(f"route `{id}` has no description")
        for doc in self.descriptions:
            for name in _schema_refs(doc):
                if name not in schemas:
                    problems.append(f"`$ref` to schema `{name}`, which is not defined")
        return problems

    def openapi(self) -> str:
        """The OpenAPI fragment for the manifest: generated from the
        patterns, the descriptions laid over it."""
        schemas, paths = {}, {}
        for doc in self.descriptions:
            schemas.update(doc.get("schemas", {}))
        for r in self.routes:
            params, path = [], ""
            for segment in [s for s in r.path.split("/") if s]:
                if segment.startswith("{") and segment.endswith("}"):
                    name = segment[1:-1].removesuffix("...")
                    params.append({"name": name, "in": "path", "required": True,
                                   "schema": {"type": "string"}})
                    path += "/{" + name + "}"
                else:
                    path += "/" + segment
            methods = ["get", "post", "put", "patch", "delete"] if r.method == "*" else [r.method.lower()]
            entry = paths.setdefault(path or "/", {})
            for method in methods:
                op = {
                    "operationId": f"{r.id}.{method}" if len(methods) > 1 else r.id,
                    "parameters": list(params),
                    "responses": {"default": {"description": "the plugin's response"}},
                }
                for doc in self.descriptions:
                    if r.id in doc.get("operations", {}):
                        _describe(op, doc["operations"][r.id], doc.get("error"))
                entry[method] = op
        return json.dumps({"paths": paths, "components": {"schemas": schemas}})


def _describe(op: dict, described: dict, error) -> None:
    content = lambda schema: {"application/json": {"schema": schema}}  # noqa: E731
    if error is not None:
        op["responses"]["default"] = {"description": "an error", "content": content(error)}
    for key, value in described.items():
        if key == "body":
            op["requestBody"] = {"required": True, "content": content(value)}
        elif key == "parameters":
            op["parameters"].extend(value)
        elif key == "responses":
            for status, response in value.items():
                response = dict(response)
                if "schema" in response:
                    response["content"] = content(response.pop("schema"))
                response.setdefault("description", f"status {status}")
                if status[:1] in "45" and "content" not in response and error is not None:
                    response["content"] = content(error)
                op["responses"][status] = response
        else:
            op[key] = value


def _schema_refs(value) -> List[str]:
    found = []
    if isinstance(value, dict):
        for key, v in value.items():
            if key == "$ref" and isinstance(v, str) and v.startswith("#/components/schemas/"):
                found.append(v.removeprefix("#/components/schemas/").split("/")[0])
            else:
                found.extend(_schema_refs(v))
    elif isinstance(value, list):
        for v in value:
            found.extend(_schema_refs(v))
    return found

