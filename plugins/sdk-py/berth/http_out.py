"""Outbound HTTP(S) to the operator's allow-list (`[http_out] allow`),
with the `http-out` capability. Refusals raise `HostError` whose `kind`
is `denied`, `invalid`, `refused`, `unreachable`, `timeout` or
`too-large`."""

from typing import List, Tuple

from ._host import call, outgoing


class Answer:
    """What came back: status, headers (names lower-case), body."""

    def __init__(self, status: int, headers: List[Tuple[str, str]], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def text(self) -> str:
        return self.body.decode(errors="replace")


def send(method: str, url: str, headers=(), body: bytes = b"", timeout_ms: int = 0) -> Answer:
    """Send one request and wait for the whole answer (`timeout_ms` 0:
    the operator's default). Running a call again after sending would
    send again: the host refuses to restart a call that sent."""
    answer = call("http_out", "send", outgoing(method, url, headers, body, timeout_ms))
    return Answer(answer.status, list(answer.headers), bytes(answer.body))


def get(url: str, timeout_ms: int = 0) -> Answer:
    """`send("GET", url)`."""
    return send("GET", url, timeout_ms=timeout_ms)
