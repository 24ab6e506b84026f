"""Corsac: a production application server for Python web apps, with its core in C."""
from corsac._core import FileWrapper, __version__, main

__all__ = ["FileWrapper", "__version__", "main"]
