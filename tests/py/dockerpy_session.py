"""The Docker SDK for Python through Berth's Docker passthrough.

argv: base URL (tcp://HOST:PORT/PATH), a running container's name, the
image to run. The client's config.json (DOCKER_CONFIG) carries the
authorisation header. Prints "ok" when every step matched.
"""
import socket
import sys

import docker

base_url, name, image = sys.argv[1:4]
client = docker.DockerClient(base_url=base_url, version="1.41", timeout=60)
container = client.containers.get(name)

# exec_run: the hijacked start, its output demultiplexed, the exit code.
result = container.exec_run(["sh", "-c", "echo py-$((6*7)); echo err >&2; exit 3"])
assert result.exit_code == 3, result
assert b"py-42\n" in result.output and b"err\n" in result.output, result.output

result = container.exec_run(["sh", "-c", "echo out; echo err >&2"], demux=True)
assert result.output == (b"out\n", b"err\n"), result.output

# exec with stdin over the raw socket: write, half-close, read to the end.
exec_id = client.api.exec_create(container.id, ["cat"], stdin=True)["Id"]
sock = client.api.exec_start(exec_id, socket=True)
raw = getattr(sock, "_sock", sock)
raw.sendall(b"through the socket\n")
raw.shutdown(socket.SHUT_WR)
received = b""
while True:
    chunk = raw.recv(4096)
    if not chunk:
        break
    received += chunk
assert b"through the socket" in received, received
assert client.api.exec_inspect(exec_id)["ExitCode"] == 0

# run without detach: create, start, wait, logs.
out = client.containers.run(image, ["echo", "run-out"], remove=True)
assert out == b"run-out\n", out

# streaming logs that end with the container.
logger = client.containers.run(image, ["sh", "-c", "echo a; sleep 0.3; echo b"], detach=True)
lines = b"".join(logger.logs(stream=True, follow=True))
assert lines == b"a\nb\n", lines
logger.remove(force=True)
print("ok")
