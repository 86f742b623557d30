"""Files that survive a kill: atomic writes, directory replacement, fsync'd appends, torn lines,
and the lock that gives a run folder one writer.

Every file bpo writes goes through here, so "a kill never leaves half a file" is true in one
place rather than in each caller.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bpo.errors import BpoError


class FolderInUseError(BpoError, RuntimeError):
    """Another process holds the folder's lock; the message names it."""


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write to a temp file beside ``path``, then rename: a kill never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """JSON lines, written atomically."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_json(path: str | Path, obj: Any) -> None:
    """JSON, written atomically: readers never see half a file."""
    write_text_atomic(path, json.dumps(obj, indent=2))


def append_lines(path: str | Path, lines: Iterable[str]) -> None:
    """Append whole lines and fsync: once this returns, they are on disk."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


def complete_lines(data: bytes) -> list[bytes]:
    """The newline-terminated lines of ``data``; a last line without its newline (cut by a kill) is dropped."""
    lines = data.splitlines(keepends=True)
    return lines[:-1] if lines and not lines[-1].endswith(b"\n") else lines


def read_jsonl(path: str | Path) -> list[Any]:
    """Rows of a JSONL file that bpo appends to; a line cut by a kill is dropped, not fatal."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in complete_lines(path.read_bytes()) if line.strip()]


def temp_dir(beside: Path, prefix: str) -> Path:
    """A fresh temp folder in ``beside`` (same file system, so the final rename is atomic)."""
    beside.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=beside))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing what was there."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def remove_leftovers(folder: Path, patterns: Iterable[str]) -> list[Path]:
    """Delete temp folders/files a killed process left in ``folder``; returns what was removed."""
    removed = []
    for pattern in patterns:
        for path in folder.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class FolderLock:
    """An exclusive ``flock`` on ``folder/.lock``, held for the life of the process (or until released).

    The kernel drops the lock when the process dies, so a SIGKILL never leaves a stale lock. The
    file records who holds it, so a refused process can say which one to wait for.
    ``wait=True`` blocks until the holder is done (for shared caches); otherwise a held lock is an error.
    """

    def __init__(self, folder: str | Path, what: str = "run folder", wait: bool = False):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / ".lock"
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise FolderInUseError(
                f"{what} {self.folder} is in use by {holder}; wait for it to finish or stop it, "
                "or use another output_dir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()} (since {started})\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
