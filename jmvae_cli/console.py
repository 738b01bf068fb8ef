"""The one place that talks to the user: everything that is not data goes to stderr."""

from rich.console import Console

console = Console(stderr=True)
