"""The Python SDK under plain Python, through its test host; and
examples/hello-py's routes and admin command."""

import json
import pathlib
import sys
import unittest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[2] / "examples" / "hello-py"))

from berth import Failure, HostError, Plugin, Response, Router, Scope, kv  # noqa: E402
from berth.testing import TestHost  # noqa: E402


def ours(status, message):
    return Response.json(status, {"problem": message, "ours": True})


def signed_in(req):
    user = req.header("x-user")
    if user is None:
        raise Failure(401, "sign in first")
    return user


def whoami(req, user):
    return Response.json(200, {"user": user})


def count(req):
    n = kv.increment("count", 1)
    return Response.json(200, {"n": n})


def number(req):
    n = req.param("n")
    if not n.isdigit():
        raise Failure(400, "n is a number")
    return Response.json(200, {"n": int(n)})


def storage_away(req):
    raise HostError("unavailable", "storage is away")


def router():
    r = Router()
    r.get("plain", "/plain", lambda req: Response.json(200, req.json()))
    r.scope(Scope(errors=ours), lambda r: (
        r.get("bad", "/bad/{n}", number),
        r.get("host", "/host", storage_away),
        r.guard(signed_in, lambda r: r.get("me", "/me", whoami)),
        r.post("count", "/count", count),
    ))
    return r


PLUGIN = Plugin("test", "0.1.0", "a test", ["kv"], router())


class RouterTests(unittest.TestCase):
    def test_a_scope_renders_its_errors_and_host_failures(self):
        host = TestHost()
        answer = host.call(PLUGIN, "GET", "/bad/x")
        self.assertEqual((answer.status, answer.json_body()["ours"]), (400, True))
        self.assertEqual(host.call(PLUGIN, "GET", "/bad/7").json_body(), {"n": 7})
        answer = host.call(PLUGIN, "GET", "/host")
        self.assertEqual(answer.status, 503)
        self.assertIn(("retry-after", "1"), answer.headers)
        self.assertEqual(answer.json_body()["ours"], True)
        answer = host.call(PLUGIN, "GET", "/plain", b"{bad")
        self.assertEqual(answer.status, 400)
        self.assertIn("invalid JSON body", answer.json_body()["error"])

    def test_a_guard_turns_callers_away_or_gives_handlers_what_it_proved(self):
        host = TestHost()
        away = host.call(PLUGIN, "GET", "/me")
        self.assertEqual((away.status, away.json_body()["problem"]), (401, "sign in first"))
        me = host.call(PLUGIN, "GET", "/me", headers=[("X-User", "ann")])
        self.assertEqual(me.json_body(), {"user": "ann"})

    def test_a_conflict_runs_the_handler_again_and_keeps_one_run_of_writes(self):
        host = TestHost().conflicts(2)
        answer = host.call(PLUGIN, "POST", "/count")
        self.assertEqual(answer.json_body(), {"n": 1})
        self.assertEqual(host.runs, 2, "two restarts")
        self.assertEqual(host.call(PLUGIN, "POST", "/count").json_body(), {"n": 2})

    def test_a_description_must_match_the_routes(self):
        r = Router()
        r.get("things.get", "/things/{id}", lambda req: Response(200))
        self.assertEqual(r.check_description(), ["no description given"])
        r.describe({"operations": {"things.get": {}, "gone": {}}})
        self.assertEqual(r.check_description(), ["route `gone` is described but does not exist"])
        doc = json.loads(r.openapi())
        self.assertEqual(doc["paths"]["/things/{id}"]["get"]["operationId"], "things.get")


class HelloTests(unittest.TestCase):
    def setUp(self):
        import app

        self.hello = app.plugin

    def test_every_route_is_described_as_the_rust_hello_describes_it(self):
        self.assertEqual(self.hello.router.check_description(), [])
        rust = HERE.parents[2] / "examples" / "hello" / "openapi.json"
        python = HERE.parents[2] / "examples" / "hello-py" / "openapi.json"
        self.assertEqual(json.loads(rust.read_text()), json.loads(python.read_text()))

    def test_greets_counts_and_echoes(self):
        host = TestHost(settings={"greeting": "Ahoy"})
        self.assertEqual(host.call(self.hello, "GET", "/hello/ann").json_body(),
                         {"greeting": "Ahoy, ann!"})
        for n in (1, 2):
            answer = host.call(self.hello, "POST", "/hello/ann/visits")
            self.assertEqual(answer.json_body(), {"name": "ann", "visits": n})
        self.assertEqual(host.admin(self.hello, ["visits", "ann"]), "ann: 2")
        host.admin(self.hello, ["reset", "ann"])
        self.assertEqual(host.call(self.hello, "GET", "/hello/ann/visits").json_body()["visits"], 0)
        echo = host.call(self.hello, "POST", "/echo", b'{"message": "h\\u00e9llo"}')
        self.assertEqual(echo.json_body(), {"echo": "héllo", "length": 5})


if __name__ == "__main__":
    unittest.main()


def load(example: str):
    """examples/EXAMPLE/app.py as a module of its own."""
    import importlib.util

    path = HERE.parents[2] / "examples" / example / "app.py"
    spec = importlib.util.spec_from_file_location(f"{example.replace('-', '_')}_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LinkcheckTests(unittest.TestCase):
    def setUp(self):
        self.linkcheck = load("linkcheck-py").plugin

    def test_a_check_is_queued_then_done_or_failed_by_its_job(self):
        self.assertEqual(self.linkcheck.router.check_description(), [])
        host = TestHost()
        answer = host.call(self.linkcheck, "POST", "/checks", b'{"url": "http://up.example/x"}')
        self.assertEqual((answer.status, answer.json_body()["state"]), (202, "queued"))
        self.assertEqual([(kind, json.loads(payload)) for kind, payload, _ in host.jobs],
                         [("check", {"id": 1})])
        seen = []
        host.http = lambda method, url, headers, body: seen.append(url) or (200, [], b"hello")
        host.job(self.linkcheck, "check", host.jobs[0][1])
        self.assertEqual(seen, ["http://up.example/x"])
        check = host.call(self.linkcheck, "GET", "/checks/1").json_body()
        self.assertEqual((check["state"], check["status"], check["bytes"]), ("done", 200, 5))

        def refuse(method, url, headers, body):
            raise HostError("refused", "host `far.example` is not in the allow-list")

        host.call(self.linkcheck, "POST", "/checks", b'{"url": "http://far.example/"}')
        host.http = refuse
        host.job(self.linkcheck, "check", host.jobs[1][1])
        check = host.call(self.linkcheck, "GET", "/checks/2").json_body()
        self.assertEqual(check["state"], "failed")
        self.assertIn("allow-list", check["error"])
        self.assertEqual(host.admin(self.linkcheck, ["count"]), "2 checks")
        bad = host.call(self.linkcheck, "POST", "/checks", b'{"url": "ftp://x"}')
        self.assertEqual(bad.status, 400)
