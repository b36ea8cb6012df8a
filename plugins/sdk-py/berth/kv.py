"""The plugin's KV namespace: one serializable transaction per call.

Keys are text, values bytes; `get_json`/`set_json` and `get_str`/`set_str`
convert. A call that meets a conflict is run again from the start by the
router (see `rerun_on_conflict`), so handlers just use these."""

import json
import time
from typing import Any, Callable, Iterator, Optional, Tuple, TypeVar

from ._host import HostError, call

_conflicted = False

#: Most times one call is run again after conflicts.
RERUNS = 64


def _noted(function: str, *args, module: str = "kv"):
    """A host call in the call's transaction, noting a conflict."""
    global _conflicted
    try:
        return call(module, function, *args)
    except HostError as e:
        if e.kind == "conflict":
            _conflicted = True
        raise


def get(key: str) -> Optional[bytes]:
    """The value at `key`, or None."""
    return _noted("get", key)


def set(key: str, value: bytes) -> None:  # noqa: A001 (the WIT's name)
    """Store `value` at `key`."""
    _noted("set", key, bytes(value))


def delete(key: str) -> bool:
    """Remove `key`; whether it was there."""
    return _noted("delete", key)


def get_str(key: str) -> Optional[str]:
    """The value at `key` as UTF-8 text, or None."""
    value = get(key)
    return None if value is None else value.decode()


def set_str(key: str, value: str) -> None:
    """Store `value` as UTF-8 text."""
    set(key, value.encode())


def get_json(key: str) -> Any:
    """The value at `key` as JSON, or None."""
    value = get(key)
    return None if value is None else json.loads(value)


def set_json(key: str, value: Any) -> None:
    """Store `value` as JSON."""
    set(key, json.dumps(value, separators=(",", ":")).encode())


def increment(key: str, delta: int = 1) -> int:
    """Add `delta` to the integer at `key` (0 if absent); the new value."""
    return _noted("increment", key, delta)


def next_in_sequence(name: str) -> int:
    """The next number of sequence `name` (never rolled back: ids)."""
    return _noted("next_in_sequence", name)


def compare_and_swap(key: str, expected: Optional[bytes], new: Optional[bytes]) -> bool:
    """Replace `expected` (None: absent) at `key` with `new` (None deletes)."""
    return _noted("compare_and_swap", key, expected, new)


def scan(prefix: str) -> Iterator[Tuple[str, bytes]]:
    """Every (key, value) under `prefix`, in key order, page by page."""
    after = None
    while True:
        page = _noted("list", prefix, after, 500)
        yield from page.entries
        if page.next is None:
            return
        after = page.next


def restart() -> None:
    """Begin this call's transaction again after a conflict (refused once
    the call acted outside KV). `rerun_on_conflict` does this for you."""
    call("kv", "restart")


T = TypeVar("T")


def rerun_on_conflict(run: Callable[[], T]) -> T:
    """Run `run`, and again from the start (up to `RERUNS` times, with a
    short growing pause) while it met a conflict and the host agrees to
    restart its transaction. The router wraps every handler, job and
    admin command in this."""
    global _conflicted
    reruns = 0
    while True:
        _conflicted = False
        answer = run()
        if not _conflicted or reruns == RERUNS:
            return answer
        try:
            restart()
        except HostError:
            return answer
        reruns += 1
        time.sleep(min(reruns, 10) / 1000)
