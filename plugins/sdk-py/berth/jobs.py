"""Durable background jobs: queue work now, run later by the plugin's
`jobs` (kind -> function), retried with backoff until it works. A job is
queued in the call's transaction: committed with its KV writes, or not at
all."""

import json
from typing import Any

from .kv import _noted


def enqueue(kind: str, payload: bytes = b"", delay_ms: int = 0) -> int:
    """Queue a job of `kind` to run after `delay_ms`; its id."""
    return _noted("enqueue", kind, bytes(payload), delay_ms, module="jobs")


def enqueue_json(kind: str, value: Any, delay_ms: int = 0) -> int:
    """Queue a job whose payload is `value` as JSON."""
    return enqueue(kind, json.dumps(value).encode(), delay_ms)
