"""Files that another thread or process may read while they are written: whole or not at all."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_whole(path: Path, text: str) -> Path:
    """Write `text` to `path` so that a reader sees the old file or the new one, never a part: a record
    (server.json, ray.json) is read by the interrupt watch's stop while the main thread's stop rewrites it, and
    summary.json by the command line while the backstop writes it. A temporary file beside it, then os.replace."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    partial.write_text(text)
    os.replace(partial, path)
    return path
