"""Files that another thread or process may read while they are written: whole or not at all."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

Record = TypeVar("Record", bound=BaseModel)


def write_whole(path: Path, text: str) -> Path:
    """Write `text` to `path` so that a reader sees the old file or the new one, never a part: a record
    (server.json, ray.json) is read by the interrupt watch's stop while the main thread's stop rewrites it, and
    summary.json by the command line while the backstop writes it. A temporary file beside it, then os.replace."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    partial.write_text(text)
    os.replace(partial, path)
    return path


def write_record(path: Path, record: BaseModel) -> None:
    """A server's record (server.json, ray.json): its JSON, written whole."""
    write_whole(path, record.model_dump_json(indent=2))


def read_record(path: Path, kind: type[Record]) -> Record | None:
    """The record of `kind` at `path`; None where there is none. ValueError where it is not one."""
    return kind.model_validate_json(path.read_text()) if path.is_file() else None
