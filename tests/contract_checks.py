"""schemathesis checks for tests/contract.rs, loaded through SCHEMATHESIS_HOOKS."""

import schemathesis


@schemathesis.check
def no_undocumented_server_error(ctx, response, case):
    """A 5xx only where the plugin documents that very status for the
    operation: the engine-down answers (Portainer's 500 "Unable to ping
    Docker environment", Docker Cloud's 503) and what cannot work here
    (Portainer's 501 for Git stacks). The answers the host documents on
    every operation (`x-berth-host-answer`) do not count: a 500 from a
    trapped plugin or a 504 from a timeout is a failure."""
    status = response.status_code
    if status < 500:
        return None
    documented = case.operation.definition.raw.get("responses", {}).get(str(status))
    if documented is None or documented.get("x-berth-host-answer"):
        raise AssertionError(f"server error {status}, not documented by the plugin: {response.text[:500]}")
    return None
