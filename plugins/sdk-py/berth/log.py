"""Log lines, written by the host tagged with the plugin and request id:
`log.info("saved", key=key)`."""

from ._host import IN_COMPONENT, call, log_level


def _log(level: str, message: str, fields: dict) -> None:
    pairs = [(k, str(v)) for k, v in fields.items()]
    if IN_COMPONENT:
        call("log", "log", log_level(level), message, pairs)
    else:
        call("log", "log", level, message, pairs)


def debug(message: str, **fields) -> None:
    _log("debug", message, fields)


def info(message: str, **fields) -> None:
    _log("info", message, fields)


def warn(message: str, **fields) -> None:
    _log("warn", message, fields)


def error(message: str, **fields) -> None:
    _log("error", message, fields)
