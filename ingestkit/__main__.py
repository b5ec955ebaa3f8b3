"""``python -m ingestkit``."""

from .main import console_main

console_main()
