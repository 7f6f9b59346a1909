"""Errors a user can fix. The commands print them as one line, without a traceback."""


class UserError(Exception):
    """Something in the user's input or environment is wrong; the message says what and how to fix it."""


class ConfigError(UserError):
    """A config file or a --set override is invalid."""


class DataError(UserError):
    """A dataset cannot be found, downloaded or read."""
