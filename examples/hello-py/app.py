"""`hello` in Python: the same routes and answers as examples/hello.

- `GET  /hello/{name}`          a greeting (the word is the `greeting` setting)
- `POST /hello/{name}/visits`   count a visit in KV, return the count
- `GET  /hello/{name}/visits`   read the count
- `POST /echo`                  JSON in, JSON out

Admin commands (`berth run hello ...`): `visits NAME`, `reset NAME`."""

import json
import pathlib

from berth import Failure, Plugin, Response, Router, config, kv

router = Router()


@router.get("hello.greet", "/hello/{name}")
def greet(req):
    word = config.get("greeting") or "Hello"
    return Response.json(200, {"greeting": f"{word}, {req.param('name')}!"})


def visits_key(name: str) -> str:
    return f"visits/{name}"


def count(name: str) -> int:
    return int(kv.get_str(visits_key(name)) or 0)


@router.post("hello.visit", "/hello/{name}/visits")
def visit(req):
    name = req.param("name")
    return Response.json(200, {"name": name, "visits": kv.increment(visits_key(name), 1)})


@router.get("hello.visits", "/hello/{name}/visits")
def visits(req):
    name = req.param("name")
    return Response.json(200, {"name": name, "visits": count(name)})


@router.post("hello.echo", "/echo")
def echo(req):
    body = req.json()
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str):
        raise Failure(400, "invalid JSON body: `message` must be a string")
    return Response.json(200, {"echo": message, "length": len(message)})


def admin(args):
    match args:
        case ["visits", name]:
            return f"{name}: {count(name)}"
        case ["reset", name]:
            kv.delete(visits_key(name))
            return f"{name}: visits reset"
    raise Failure(400, "usage: berth run hello visits NAME | reset NAME")


# The routes in OpenAPI terms, for /_berth/openapi.json (read when the
# component is built).
router.describe(json.loads((pathlib.Path(__file__).parent / "openapi.json").read_text()))

plugin = Plugin(
    "hello", "0.1.0", "Greets, counts visits, echoes JSON", ["kv", "config", "log"], router, admin
)

try:
    WitWorld = plugin.world()
except ImportError:  # plain Python, for the unit tests
    pass
