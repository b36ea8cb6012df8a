"""A test host: a plugin's routes, admin command and jobs under plain
Python (`python3 -m unittest`), no Berth needed.

    host = TestHost(settings={"greeting": "Ahoy"})
    answer = host.call(plugin, "GET", "/hello/ann")
    assert answer.json_body() == {"greeting": "Ahoy, ann!"}

KV is in memory, one transaction per call: a request or admin command
commits what it wrote whatever it answers, a job only when it succeeds;
`conflicts(n)` makes the next `n` KV calls meet a conflict (the call's
writes are dropped and it is run again, as on the host)."""

from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, unquote

from ._host import HostError

_active: Optional["TestHost"] = None


class _Incoming:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body


class Page:
    def __init__(self, entries, next):
        self.entries, self.next = entries, next


class TestHost:
    def __init__(self, settings: Optional[Dict[str, str]] = None):
        self.store: Dict[str, bytes] = {}
        self.settings = dict(settings or {})
        self.logs: List[Tuple[str, str, list]] = []
        self._writes: Optional[Dict[str, Optional[bytes]]] = None
        self._conflicts = 0
        self._rolled_back = False
        self._sequences: Dict[str, int] = {}
        self.runs = 0
        #: Jobs queued by committed calls: (kind, payload, delay_ms).
        self.jobs: List[Tuple[str, bytes, int]] = []
        self._queued: List[Tuple[str, bytes, int]] = []
        #: Answers outbound requests: (method, url, headers, body) ->
        #: (status, headers, body), or raises HostError.
        self.http = _no_http

    def conflicts(self, n: int) -> "TestHost":
        """The next `n` KV calls answer `conflict`."""
        self._conflicts = n
        return self

    # --- calls -----------------------------------------------------------

    def call(self, plugin, method: str, path: str, body: bytes = b"",
             headers: Optional[List[Tuple[str, str]]] = None):
        """Route `method path` as the host would and call its handler."""
        from .router import Request, Response

        target, _, query = path.partition("?")
        for route in plugin.router.routes:
            if route.method not in (method.upper(), "*"):
                continue
            params = _match(route.path, target)
            if params is not None:
                request = Request("test-1", method.upper(), target, route.id, params,
                                  parse_qsl(query), headers or [], body, "127.0.0.1:1")
                return self._in_call(lambda: plugin.router.dispatch(request), keep=lambda _: True)
        return Response.error(404, f"no route for {method} {path}")

    def admin(self, plugin, args: List[str]) -> str:
        """Run the admin command; its writes are committed either way."""
        return self._in_call(lambda: plugin.run_admin(args), keep=lambda _: True)

    def job(self, plugin, kind: str, payload: bytes) -> None:
        """Run a job; its writes are committed only if it succeeds."""
        return self._in_call(lambda: plugin.run_job(kind, payload), keep=lambda _: True)

    def _in_call(self, run, keep):
        global _active
        _active, self._writes, self._rolled_back, self._queued = self, {}, False, []
        try:
            answer = run()
            if not self._rolled_back and keep(answer):
                for key, value in self._writes.items():
                    if value is None:
                        self.store.pop(key, None)
                    else:
                        self.store[key] = value
                self.jobs.extend(self._queued)
            return answer
        finally:
            _active, self._writes = None, None

    # --- the capabilities ------------------------------------------------

    def _kv(self, function, *args):
        if self._writes is None:
            raise HostError("unavailable", "no call in progress")
        if self._rolled_back and function != "restart":
            raise HostError("conflict", "this call's transaction was rolled back")
        if self._conflicts > 0 and function != "restart":
            self._conflicts -= 1
            self._rolled_back = True
            raise HostError("conflict", "a concurrent call holds the key (scripted)")
        read = lambda key: self._writes[key] if key in self._writes else self.store.get(key)  # noqa: E731
        if function == "get":
            return read(args[0])
        if function == "set":
            self._writes[args[0]] = bytes(args[1])
            return None
        if function == "delete":
            existed = read(args[0]) is not None
            self._writes[args[0]] = None
            return existed
        if function == "increment":
            value = int(read(args[0]) or b"0") + args[1]
            self._writes[args[0]] = str(value).encode()
            return value
        if function == "next_in_sequence":
            self._sequences[args[0]] = self._sequences.get(args[0], 0) + 1
            return self._sequences[args[0]]
        if function == "compare_and_swap":
            key, expected, new = args
            if read(key) != expected:
                return False
            self._writes[key] = new
            return True
        if function == "list":
            prefix, after, limit = args
            keys = sorted({*self.store, *self._writes})
            keys = [k for k in keys if k.startswith(prefix) and (after is None or k > after)]
            entries = [(k, read(k)) for k in keys if read(k) is not None]
            page = entries[:limit]
            more = len(entries) > limit
            return Page(page, page[-1][0] if more else None)
        if function == "restart":
            self._writes, self._rolled_back, self._queued = {}, False, []
            self.runs += 1
            return None
        raise HostError("invalid", f"kv.{function} is not in the test host")


def _no_http(method, url, headers, body):
    raise HostError("denied", "no outbound HTTP in this test host")


def raw(module: str, function: str, *args):
    """A capability call from the SDK, answered by the active test host."""
    host = _active
    if host is None:
        raise HostError("unavailable", f"{module}.{function} outside a test host call")
    if module == "kv":
        return host._kv(function, *args)
    if module == "config":
        return host.settings.get(args[0]) if function == "get" else list(host.settings.items())
    if module == "log":
        host.logs.append(args)
        return None
    if module == "jobs":
        if host._rolled_back:
            raise HostError("conflict", "this call's transaction was rolled back")
        host._queued.append(args)
        return len(host.jobs) + len(host._queued)
    if module == "http_out":
        method, url, headers, body, _ = args[0]
        status, answer_headers, answer_body = host.http(method, url, headers, body)
        return _Incoming(status, answer_headers, answer_body)
    raise HostError("denied", f"{module} is not in the test host")


def _match(pattern: str, path: str) -> Optional[Dict[str, str]]:
    """The parameters of `path` under `pattern`, or None."""
    want = [s for s in pattern.split("/") if s]
    have = [s for s in path.split("/") if s]
    params = {}
    for i, segment in enumerate(want):
        if segment.startswith("{") and segment.endswith("...}"):
            params[segment[1:-4]] = "/".join(have[i:])
            return params
        if i >= len(have):
            return None
        if segment.startswith("{") and segment.endswith("}"):
            params[segment[1:-1]] = unquote(have[i])
        elif segment != have[i]:
            return None
    return params if len(have) == len(want) else None
