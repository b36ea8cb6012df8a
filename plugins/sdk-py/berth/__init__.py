"""Berth's SDK for plugins in Python, built with componentize-py.

    from berth import Plugin, Response, Router, kv

    router = Router()

    @router.get("greet", "/hello/{name}")
    def greet(req):
        return Response.json(200, {"greeting": f"Hello, {req.param('name')}!"})

    plugin = Plugin("hello", "0.1.0", "Greets", ["kv"], router)
    WitWorld = plugin.world()

See README.md beside this package for the build command."""

from typing import Callable, Dict, List, Optional

from . import config, http_out, jobs, kv, log
from ._host import HostError
from .router import Failure, Request, Response, Router, Scope

__all__ = [
    "Failure", "HostError", "Plugin", "Request", "Response", "Router", "Scope",
    "config", "http_out", "jobs", "kv", "log",
]


class Plugin:
    """A plugin: its manifest (name, version, description, the
    capabilities it asks for), its routes, and optionally its admin
    command (`admin(args) -> str`, raising to fail) and jobs (kind ->
    `run(payload: bytes)`, raising to fail and be retried)."""

    def __init__(
        self,
        name: str,
        version: str,
        description: str,
        capabilities: List[str],
        router: Router,
        admin: Optional[Callable[[List[str]], str]] = None,
        jobs: Optional[Dict[str, Callable[[bytes], None]]] = None,
    ):
        self.name, self.version, self.description = name, version, description
        self.capabilities = list(capabilities)
        self.router = router
        self.admin_command = admin
        self.jobs = dict(jobs or {})

    def run_admin(self, args: List[str]) -> str:
        if self.admin_command is None:
            raise Failure(400, f"plugin `{self.name}` has no admin commands")
        return kv.rerun_on_conflict(lambda: self.admin_command(args))

    def run_job(self, kind: str, payload: bytes) -> None:
        run = self.jobs.get(kind)
        if run is None:
            raise Failure(400, f"unknown job kind `{kind}`")
        kv.rerun_on_conflict(lambda: run(payload))

    def world(self):
        """The class componentize-py exports: bind it as `WitWorld` in the
        app module."""
        import wit_world
        from componentize_py_types import Err
        from wit_world.imports import types

        plugin = self

        def failed(e: Exception) -> Err:
            return Err(e.message if isinstance(e, (Failure, HostError)) else str(e))

        class WitWorld(wit_world.WitWorld):
            def describe(self):
                routes = [types.Route(id=r.id, method=r.method, path=r.path)
                          for r in plugin.router.routes]
                return types.Manifest(
                    name=plugin.name, version=plugin.version,
                    description=plugin.description, routes=routes,
                    capabilities=plugin.capabilities,
                    openapi=plugin.router.openapi(),
                )

            def handle(self, request):
                req = Request(request.id, request.method, request.path, request.route,
                              request.params, request.query, request.headers,
                              request.body, request.client)
                answer = plugin.router.dispatch(req)
                return types.Outcome_Respond(types.Response(
                    status=answer.status, headers=answer.headers, body=answer.body))

            def run_job(self, kind, payload):
                try:
                    plugin.run_job(kind, payload)
                except Exception as e:
                    raise failed(e) from None

            def admin(self, args):
                try:
                    return plugin.run_admin(args)
                except Exception as e:
                    raise failed(e) from None

        return WitWorld
