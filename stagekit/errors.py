"""User-facing errors: one line that says what is wrong and where, never a traceback wall."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad config, bad data, missing model). Printed as one line."""


class ConfigError(UserError):
    """An unknown key, a wrong type or an impossible value in a config or an override."""


class DataError(UserError):
    """Missing, unreadable or malformed input data, or an unreachable data source."""
