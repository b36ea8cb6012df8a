"""`linkcheck`: a Berth plugin in Python that uses KV, jobs and http-out.

- `POST /checks` `{"url": "http://..."}`: records a check (202) and
  queues a job that fetches the URL through `http-out`;
- `GET  /checks/{id}`: the check: `queued`, then `done` with the status
  and size of what came back, or `failed` with the host's reason (a URL
  outside the operator's allow-list, say);
- `GET  /checks`: every check, oldest first.

Errors are `{"error": ...}`. Admin command: `berth run linkcheck count`."""

from berth import Failure, HostError, Plugin, Response, Router, http_out, jobs, kv, log

router = Router()


def key(id: int) -> str:
    # Ids are zero-padded so that KV's key order is their order.
    return f"checks/{id:012d}"


@router.post("linkcheck.create", "/checks")
def create(req):
    body = req.json()
    url = body.get("url") if isinstance(body, dict) else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise Failure(400, "`url` must be an http:// or https:// URL")
    id = kv.next_in_sequence("checks")
    check = {"id": id, "url": url, "state": "queued"}
    kv.set_json(key(id), check)
    jobs.enqueue_json("check", {"id": id})
    return Response.json(202, check)


@router.get("linkcheck.get", "/checks/{id}")
def get(req):
    id = req.param("id")
    check = kv.get_json(key(int(id))) if id.isdigit() else None
    if check is None:
        raise Failure(404, f"no check {id}")
    return Response.json(200, check)


@router.get("linkcheck.list", "/checks")
def list_checks(req):
    return Response.json(200, [kv.get_json(k) for k, _ in kv.scan("checks/")])


def check(payload: bytes) -> None:
    """The job: fetch the URL, record what came back. A refusal is an
    answer too (recorded, not retried); anything else fails the job, which
    runs again later."""
    import json

    id = json.loads(payload)["id"]
    record = kv.get_json(key(id))
    try:
        answer = http_out.get(record["url"])
        record.update(state="done", status=answer.status, bytes=len(answer.body))
    except HostError as e:
        if e.kind not in ("refused", "denied", "invalid"):
            raise
        record.update(state="failed", error=e.message)
    kv.set_json(key(id), record)
    log.info("checked", id=id, state=record["state"])


def admin(args):
    if args == ["count"]:
        return f"{sum(1 for _ in kv.scan('checks/'))} checks"
    raise Failure(400, "usage: berth run linkcheck count")


router.describe({
    "schemas": {"Check": {
        "type": "object", "required": ["id", "url", "state"],
        "properties": {
            "id": {"type": "integer"}, "url": {"type": "string"},
            "state": {"type": "string", "enum": ["queued", "done", "failed"]},
            "status": {"type": "integer"}, "bytes": {"type": "integer"},
            "error": {"type": "string"},
        },
    }},
    "error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "operations": {
        "linkcheck.create": {
            "summary": "Check a URL in the background",
            "body": {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}},
            "responses": {"202": {"schema": {"$ref": "#/components/schemas/Check"}}, "400": {}},
        },
        "linkcheck.get": {
            "summary": "One check",
            "responses": {"200": {"schema": {"$ref": "#/components/schemas/Check"}}, "404": {}},
        },
        "linkcheck.list": {
            "summary": "Every check, oldest first",
            "responses": {"200": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Check"}}}},
        },
    },
})

plugin = Plugin(
    "linkcheck", "0.1.0", "Checks URLs in the background (KV, jobs, http-out)",
    ["kv", "jobs", "http-out", "log"], router, admin, {"check": check},
)

try:
    WitWorld = plugin.world()
except ImportError:  # plain Python, for the unit tests
    pass
