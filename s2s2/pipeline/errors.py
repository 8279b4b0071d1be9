"""User-facing errors: the CLI prints them without a traceback and exits with status 2."""

from __future__ import annotations

from pathlib import Path


class S2S2Error(Exception):
    """A problem with the user's input (data, config, store) that the user can fix.

    The message must say which file or value is wrong and how to fix it.
    """


class ConfigError(S2S2Error):
    """A configuration file or override that does not validate."""


class DataError(S2S2Error):
    """A dataset on disk that cannot be read as declared."""

    def __init__(self, message: str, path: str | Path | None = None, fix: str | None = None):
        parts = [f"{path}: {message}" if path is not None else message]
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__("\n".join(parts))
        self.path = path


class StoreError(S2S2Error):
    """A stack store that is missing, incomplete, corrupt or made for other data."""
