"""Errors a user can cause and fix. The CLI shows their message as one line, without a traceback."""


class JmvaeError(Exception):
    """Base class for expected failures; the message is one clear line meant for the user."""

    exit_code = 1
