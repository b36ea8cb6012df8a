"""The plugin's settings, from `[plugins.NAME.settings]` in the
operator's config file (non-string values arrive as JSON text)."""

from typing import Dict, Optional

from ._host import call


def get(key: str) -> Optional[str]:
    """The setting `key`, or None."""
    return call("config", "get", key)


def get_all() -> Dict[str, str]:
    """Every setting."""
    return dict(call("config", "get_all"))
