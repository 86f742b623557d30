"""Files that survive a kill: atomic writes, directory replacement, fsync'd appends, torn lines,
and the lock that gives a run folder one writer.

Every file a run reads back goes through here, or is written into a temporary folder that
:func:`replace_dir` renames into place (adapters, exported and reward models), so "a kill never
leaves half a file" is true in one place rather than in each caller. Plots and TensorBoard event
files are written by their libraries; ``bpo report RUN`` redraws the plots.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bpo.errors import BpoError


class FolderInUseError(BpoError, RuntimeError):
    """Another process holds the folder's lock; the message names it."""


class StorageError(BpoError, OSError):
    """A file could not be written (disk full, no permission); the message names it and what to do."""


class DamagedFileError(BpoError, ValueError):
    """A line in the middle of an append-only file is not what bpo wrote; the message names file and line."""


TEMP_FILE = ".bpo-tmp"  # the suffix of bpo's own temp files: the only files it removes at a start


def cache_dir() -> Path:
    """bpo's cache across runs (offline models, answer caches, the engine): ``$BPO_CACHE`` or ``~/.cache/bpo``."""
    return Path(os.environ.get("BPO_CACHE", Path.home() / ".cache" / "bpo"))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write to a temp file beside ``path``, then rename: a kill never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TEMP_FILE}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise StorageError(
            f"cannot write {path} ({err.strerror or err}); the file is as it was: free space (or fix the "
            "permissions), then run the command again (a run continues with bpo train --resume RUN)"
        ) from None


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """JSON lines, written atomically."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def tidy(obj: Any) -> Any:
    """``obj`` with every float at 12 significant digits: a mean printed as 0.14595000000000008 is 0.14595
    (the float noise of summation, not information)."""
    if isinstance(obj, float):
        return float(f"{obj:.12g}")
    if isinstance(obj, dict):
        return {k: tidy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [tidy(v) for v in obj]
    return obj


@contextmanager
def saving(where: Path, then: str) -> Iterator[None]:
    """A save that a full disk (or a lost permission) cuts short is said in one line naming ``where``;
    ``then`` says how to go on once space is freed. What was half-written is never used (it lies in a
    temp folder, removed at the next start)."""
    try:
        yield
    except StorageError:
        raise
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        if isinstance(err, RuntimeError) and "writ" not in str(err).lower():
            raise
        reason = getattr(err, "strerror", None) or " ".join(str(err).split())[-120:]
        raise StorageError(f"cannot write {where} ({reason}); nothing of it is used: free space, then {then}") from None


def write_json(path: str | Path, obj: Any) -> None:
    """JSON, written atomically: readers never see half a file."""
    write_text_atomic(path, json.dumps(obj, indent=2))


def _torn_tail(f: Any, size: int) -> int:
    """The length of ``f`` without a last line that lacks its newline (a write cut by a kill or a full disk)."""
    if size == 0:
        return 0
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return size
    end = size
    while end > 0:  # back to the last newline, a block at a time
        start = max(0, end - (1 << 16))
        f.seek(start)
        block = f.read(end - start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def append_lines(path: str | Path, lines: Iterable[str]) -> None:
    """Append whole lines, or nothing, and fsync: once this returns, they are on disk.

    A torn last line left by an earlier cut write is removed first, so the new lines never glue
    onto it; a write that fails (a full disk) is cut back to where it started and said in one line.
    """
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    try:
        with open(path, "a+b", buffering=0) as f:  # unbuffered: a failed write is seen here, not at close
            size = f.seek(0, os.SEEK_END)
            keep = _torn_tail(f, size)
            if keep != size:
                f.truncate(keep)
            try:
                done = 0
                while done < len(data):  # a full disk may take part of a write before it refuses the rest
                    wrote = f.write(data[done:])
                    if not wrote:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    done += wrote
                os.fsync(f.fileno())
            except OSError:
                f.truncate(keep)  # all or nothing: a half-written line is never left behind
                raise
    except OSError as err:
        raise StorageError(
            f"cannot append to {path} ({err.strerror or err}); nothing of this write was kept: free space (or fix "
            "the permissions), then run the command again (a run continues with bpo train --resume RUN)"
        ) from None


def complete_lines(data: bytes) -> list[bytes]:
    """The newline-terminated lines of ``data``; a last line without its newline (cut by a kill) is dropped."""
    lines = data.splitlines(keepends=True)
    return lines[:-1] if lines and not lines[-1].endswith(b"\n") else lines


def read_jsonl(path: str | Path) -> list[Any]:
    """Rows of a JSONL file that bpo appends to. A last line cut by a kill is dropped (the next append
    removes it); a damaged line before it is refused, naming the file and the line."""
    path = Path(path)
    packed = path.with_name(path.name + ".gz")  # a published copy (bpo compare --publish)
    if not path.exists() and packed.exists():
        path = packed
    if not path.exists():
        return []
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    rows = []
    for number, line in enumerate(complete_lines(data), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DamagedFileError(
                f"{path}:{number}: damaged line ({type(err).__name__}); bpo wrote whole lines here, so the file was "
                "changed or cut by something else: restore it from a backup, or remove that line"
            ) from None
    return rows


def temp_dir(beside: Path, prefix: str) -> Path:
    """A fresh temp folder in ``beside`` (same file system, so the final rename is atomic)."""
    beside.mkdir(parents=True, exist_ok=True)
    restore_aside(beside)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=beside))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700: the folder it becomes is an ordinary one
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


ASIDE = ".bpo-old-"  # a folder being replaced waits under ".NAME.bpo-old-PID" until its successor is in place


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``; what was there is moved aside first and removed only
    once the new one is in place, so a kill at any moment leaves the old or the new folder (never none)."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.parent / f".{final.name}{ASIDE}{os.getpid()}"
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def restore_aside(folder: Path) -> None:
    """After a kill in :func:`replace_dir`: put back a folder moved aside whose successor never arrived,
    remove one whose successor did."""
    for old in folder.glob(f".*{ASIDE}*"):
        name, _, pid = old.name[1:].rpartition(ASIDE)
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another process is between its two renames right now
        final = folder / name
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)


def temp_for(target: Path) -> Path:
    """A temp folder to build ``target`` in, beside it; what a killed earlier attempt left there is cleaned
    first (its temp folders, and a folder it had moved aside is put back)."""
    remove_leftovers(target.parent, [f".{target.name}{TEMP_FILE}-*"])
    return temp_dir(target.parent, f".{target.name}{TEMP_FILE}-")


def check_target(
    target: Path, what: str, ours: Callable[[Path], bool], force: bool, reading: Path | None = None
) -> Path:
    """Refuse to replace a folder bpo did not write: an existing, non-empty ``target`` must be ``what``
    (``ours`` says whether it is) unless ``force``; a target inside (or holding) the folder being read
    is refused always. Returns the target, resolved."""
    target = Path(target).resolve()
    if reading is not None:
        src = Path(reading).resolve()
        if target == src or src in target.parents or target in src.parents:
            raise BpoError(f"{target} is inside {src}, which is being read (or holds it); write somewhere else")
    if target.exists() and not target.is_dir():
        raise BpoError(f"{target} is a file, not a folder; choose a new folder")
    if target.is_dir() and any(target.iterdir()) and not ours(target) and not force:
        raise BpoError(
            f"{target} exists and is not {what}; bpo replaces only its own output: choose a new or empty folder, "
            "or pass --force to replace it (the old one is kept until the new one is complete)"
        )
    return target


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


MANIFEST = "manifest.json"  # size and SHA-256 of every file of a folder bpo wrote, written last


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _hash(p)} for p in files}
    write_json(folder / MANIFEST, manifest)


def verify(folder: Path) -> str | None:
    """None when every file the manifest lists is there with its size and hash; else what is wrong."""
    if not folder.is_dir():
        return "missing"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "damaged manifest"
    if not isinstance(manifest, dict) or not all(isinstance(v, dict) for v in manifest.values()):
        return "damaged manifest"
    for name, want in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["size"]:
            return f"{name} has {path.stat().st_size} bytes, {want['size']} were written"
        if _hash(path) != want["sha256"]:
            return f"{name} does not match its hash"
    return None


class FolderLock:
    """An exclusive ``flock`` on ``folder/.lock``, held for the life of the process (or until released).

    The kernel drops the lock when the process dies, so a SIGKILL never leaves a stale lock. The
    file records who holds it, so a refused process can say which one to wait for.
    ``wait=True`` blocks until the holder is done (for shared caches); otherwise a held lock is an error.
    """

    def __init__(
        self,
        folder: str | Path,
        what: str = "run folder",
        wait: bool = False,
        fix: str = "or use another output_dir",
        guards: str | Path | None = None,
    ):
        """``guards``: the folder a refusal names, when the lock lies beside it rather than in it."""
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
                f"{what} {guards or self.folder} is in use by {holder}; wait for it to finish or stop it, {fix}"
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
