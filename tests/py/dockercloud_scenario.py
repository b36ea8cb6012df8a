"""The official Docker Cloud Python SDK (python-dockercloud 1.0.12, from
PyPI, unmodified) against Berth's `stacks` plugin.

Environment: DOCKERCLOUD_AUTH ("Basic ..."), BERTH_REST_HOST, BERTH_STREAM_HOST.

python-dockercloud 1.0.12 is Python 2 code. On Python 3 one line of it
cannot run: `send_request` joins a str host with a bytes path
(`urljoin(rest_host, path.encode("ascii"))`), which Python 3 refuses. The
shim below wraps that one `urljoin` to decode bytes first; nothing else
of the SDK is touched. Credentials go through DOCKERCLOUD_AUTH, the SDK's
own API-roles path (its user/apikey path base64-encodes a str, also
Python 2 only).
"""

import json
import os
import sys
import threading
import time
import traceback

import dockercloud
import dockercloud.api.http as sdk_http

_urljoin = sdk_http.urljoin
sdk_http.urljoin = lambda base, url: _urljoin(
    base, url.decode() if isinstance(url, bytes) else url
)

dockercloud.rest_host = os.environ["BERTH_REST_HOST"]
dockercloud.stream_host = os.environ["BERTH_STREAM_HOST"]
dockercloud.dockercloud_auth = os.environ["DOCKERCLOUD_AUTH"]

events = []
opened = threading.Event()


def stream():
    """The SDK's event stream; it installs a SIGINT handler, so it must
    run on the main thread. The scenario runs beside it and ends the
    process."""
    ev = dockercloud.Events()
    ev.on_open(opened.set)
    ev.on_message(lambda m: events.append(json.loads(m)))
    ev.run_forever()


def wait_for(what, check, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for " + what)


def seen(kind, uri, state):
    return any(
        e["type"] == kind and e["resource_uri"] == uri and e["state"] == state
        for e in events
    )


def scenario():
    assert opened.wait(10), "the events websocket did not open"
    # --- a service: create, start, scale, stop, terminate -----------------------
    svc = dockercloud.Service.create(
        image="busybox:latest",
        name="sdkweb",
        target_num_containers=2,
        run_command="httpd -f -p 8080",
        container_envvars=[{"key": "GREETING", "value": "hi"}],
    )
    assert svc.save()
    assert svc.state == "Not running", svc.state
    assert svc.uuid and svc.resource_uri == "/api/app/v1/service/%s/" % svc.uuid
    uri = svc.resource_uri

    assert svc.start()
    assert svc.state == "Running", svc.state
    assert svc.dockercloud_action_uri.startswith("/api/audit/v1/action/")
    action = dockercloud.Action.fetch(svc.dockercloud_action_uri.rstrip("/").split("/")[-1])
    assert action.state == "Success" and action.action == "Service Start", action.state
    wait_for("2 running containers", lambda: dockercloud.Service.fetch(svc.uuid).running_num_containers == 2)
    wait_for("the Running event", lambda: seen("service", uri, "Running"))
    wait_for("container events", lambda: any(e["type"] == "container" and uri in e["parents"] for e in events))

    names = [s.name for s in dockercloud.Service.list()]
    assert "sdkweb" in names, names
    assert [s.uuid for s in dockercloud.Service.list(name="sdkweb")] == [svc.uuid]
    containers = dockercloud.Container.list(service=uri)
    assert len(containers) == 2, len(containers)

    svc.target_num_containers = 3
    assert svc.save()
    assert svc.scale()
    wait_for("3 running containers", lambda: dockercloud.Service.fetch(svc.uuid).running_num_containers == 3)

    assert svc.stop()
    assert svc.state == "Stopped", svc.state
    wait_for("the Stopped event", lambda: seen("service", uri, "Stopped"))
    try:
        svc.stop()
        raise AssertionError("stopping a stopped service must fail")
    except dockercloud.ApiError as e:
        assert "409" in str(e), e

    assert svc.delete()
    fetched = dockercloud.Service.fetch(svc.uuid)
    assert fetched.state == "Terminated", fetched.state

    # --- a stack: create, start, stop, terminate -------------------------------
    stack = dockercloud.Stack.create(
        name="sdkstack",
        services=[
            {"name": "web", "image": "busybox:latest", "run_command": "httpd -f -p 8080",
             "target_num_containers": 2, "linked_to_service": [{"to_service": "db", "name": "database"}]},
            {"name": "db", "image": "busybox:latest", "run_command": "sleep 100000"},
        ],
    )
    assert stack.save()
    assert stack.state == "Not running", stack.state
    assert len(stack.services) == 2
    assert stack.start()
    assert stack.state == "Running", stack.state
    suri = stack.resource_uri
    wait_for("the stack's Running event", lambda: seen("stack", suri, "Running"))
    exported = stack.export()
    assert exported["web"]["image"] == "busybox:latest", exported
    assert exported["web"]["links"] == ["db:database"], exported
    assert [s.name for s in dockercloud.Stack.list(name="sdkstack")] == ["sdkstack"]
    assert stack.stop()
    assert stack.state == "Stopped"
    assert stack.delete()
    assert dockercloud.Stack.fetch(stack.uuid).state == "Terminated"

    print(json.dumps({"ok": True, "events": len(events)}))


def run_scenario():
    try:
        scenario()
        sys.stdout.flush()
        os._exit(0)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


threading.Thread(target=run_scenario, daemon=True).start()
stream()
