"""A wasi:http component in Python, built with componentize-py: it answers
JSON of the request as it sees it, and at /fetch?url=URL fetches URL
(wasi:http outgoing)."""

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

import poll_loop
from componentize_py_types import Ok
from poll_loop import PollLoop, Stream
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        loop = PollLoop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(answer(request, response_out))


async def read_all(body) -> bytes:
    stream = Stream(body)
    data = b""
    while True:
        chunk = await stream.next()
        if chunk is None:
            return data
        data += chunk


async def answer(request: IncomingRequest, response_out: ResponseOutparam) -> None:
    headers = dict(request.headers().entries())
    path_info = headers.get("spin-path-info", b"/").decode()
    status, content_type = 200, b"application/json"
    if path_info == "/fetch":
        query = parse_qs(urlsplit(request.path_with_query() or "").query)
        text, status, content_type = await fetch(query.get("url", [""])[0]), 200, b"text/plain"
        if text.startswith("refused"):
            status = 502
        payload = text.encode()
    else:
        body = await read_all(request.consume())
        payload = json.dumps(
            {
                "language": "python",
                "method": type(request.method()).__name__.removeprefix("Method_").upper(),
                "path_info": path_info,
                "path_with_query": request.path_with_query(),
                "body": body.decode(errors="replace"),
            }
        ).encode()
    response = OutgoingResponse(Fields.from_list([("content-type", content_type)]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    stream = body.write()
    stream.blocking_write_and_flush(payload)
    stream.__exit__(None, None, None)
    OutgoingBody.finish(body, None)


async def fetch(url: str) -> str:
    parts = urlsplit(url)
    request = OutgoingRequest(Fields())
    request.set_method(Method_Get())
    request.set_scheme(Scheme_Http())
    request.set_authority(parts.netloc)
    request.set_path_with_query(parts.path or "/")
    try:
        response = await poll_loop.send(request)
    except Exception as e:  # the host refused or could not connect
        return f"refused: {e}"
    body = await read_all(response.consume())
    return f"fetched {response.status()}: {body.decode()}"
