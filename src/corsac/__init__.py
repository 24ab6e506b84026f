"""Corsac: a production application server for Python web apps, with its core in C."""
from corsac._core import ClientDisconnected, FileWrapper, __version__, main

__all__ = ["ClientDisconnected", "FileWrapper", "__version__", "main"]
