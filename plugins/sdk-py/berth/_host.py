"""The capability functions the SDK calls: the host's imports inside a
component (the `wit_world` bindings componentize-py generates), or the
test host's (`berth.testing`) in plain Python."""

try:
    from componentize_py_types import Err as _Err
    from wit_world.imports import config as _config
    from wit_world.imports import http_out as _http_out
    from wit_world.imports import jobs as _jobs
    from wit_world.imports import kv as _kv
    from wit_world.imports import log as _log

    IN_COMPONENT = True
except ImportError:  # plain Python: the test host
    IN_COMPONENT = False
    _Err = None


class HostError(Exception):
    """A capability call the host refused: `kind` is `denied`, `invalid`,
    `conflict` or `unavailable`."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message

    @property
    def transient(self) -> bool:
        """Whether the client should simply try again later."""
        return self.kind in ("conflict", "unavailable")


def _kind(error) -> str:
    """`Error_Conflict` -> `conflict`, `HttpError_TooLarge` -> `too-large`."""
    name = type(error).__name__.split("_", 1)[-1]
    return "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-")


def call(module: str, function: str, *args):
    """Call `module.function(*args)` on the host, as `HostError` on refusal."""
    if not IN_COMPONENT:
        from . import testing

        return testing.raw(module, function, *args)
    target = {
        "kv": _kv, "config": _config, "log": _log, "jobs": _jobs, "http_out": _http_out,
    }[module]
    try:
        return getattr(target, function)(*args)
    except _Err as e:
        raise HostError(_kind(e.value), getattr(e.value, "value", "")) from None


def outgoing(method, url, headers, body, timeout_ms):
    """The WIT record of an outgoing request (the test host takes a tuple)."""
    if not IN_COMPONENT:
        return (method, url, list(headers), bytes(body), timeout_ms)
    return _http_out.Outgoing(method=method, url=url, headers=list(headers),
                              body=bytes(body), timeout_ms=timeout_ms)


def log_level(name: str):
    """The WIT log level called `name`."""
    return getattr(_log.Level, name.upper())
