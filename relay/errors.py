"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input, bad configuration or an unreachable service: no traceback, exit 2."""


class ConfigError(UserError):
    """A configuration file or environment variable is invalid; the message names file and key."""
