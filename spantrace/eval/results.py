"""The evaluation results file: JSONL rows that are never lost, never duplicated, and never written over a file
that is not one.

Guarantees of ``ResultsFile`` (the writer, used by ``runner.run_eval`` and ``distributed.run_eval_ray``):

- It holds an exclusive lock for as long as it is open: ``FILE.lock`` beside the results file, holding the
  writer's PID. A second writer is refused with a line naming that PID; the lock goes with the process
  (a killed writer leaves no lock behind that could block anyone).
- It never changes a file it did not write. An existing file is accepted only when every complete line is a
  spantrace row (a JSON object with ``task``, ``sample_id``, ``method`` and ``config``); anything else (a config,
  notes, a binary) is refused and left untouched, byte for byte. A torn last line (a crash mid-write) is cut
  off only in a file whose other lines are all spantrace rows, and only when it looks like the start of one.
- Each row is one ``write`` of the whole line, then ``fsync``; when a write fails part-way (a full disk), the
  file is cut back to where it was, so it never holds half a row.

``read_results`` reads a file for the report: lines that are not rows (not UTF-8, not JSON, not an object,
keys missing) are skipped and counted; a file with no row at all is refused with one line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import InputError, SpanTraceError

ROW_KEYS = ("task", "sample_id", "method", "config")  # every row has them, as strings
ROW_START = b'{"'  # rows are written as json.dumps(row, sort_keys=True): ASCII, starting with a key


class ResultsFileError(InputError):
    """The results file cannot be used: not a results file, locked by another run, or not writable."""


def parse_row(line: bytes) -> dict[str, Any] | str:
    """The row a line holds, or why it is not one (a short phrase)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    try:
        row = json.loads(text)
    except (ValueError, RecursionError):  # malformed; or an integer of thousands of digits, or nested too deep
        return "not JSON"
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    missing = [key for key in ROW_KEYS if not isinstance(row.get(key), str)]
    if missing:
        return f"a JSON object without {', '.join(missing)} (as text)"
    return row


@dataclass
class Loaded:
    """A results file as read: its rows, and the lines that were not rows (``(line number, why)``)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    torn: bool = False  # the last line has no newline and starts like a row: a write cut short
    tail_row: dict[str, Any] | None = None  # that line, when it is a whole row that only lacks its newline


def read_results(path: Path | str) -> Loaded:
    """Every row of ``path``, skipping (and counting) lines that are not rows; a torn last line is ignored.

    ResultsFileError when the file cannot be read or holds no row but other lines (not a results file)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ResultsFileError(f"could not read {path}: {error.strerror}") from error
    loaded = _split(data)
    if loaded.tail_row is not None:
        loaded.rows.append(loaded.tail_row)
    if not loaded.rows and loaded.skipped:
        number, why = loaded.skipped[0]
        raise ResultsFileError(f"{path} is not a spantrace results file (line {number} is {why}); "
                               "give the JSONL file `spantrace eval --out` wrote")
    return loaded


def _split(data: bytes) -> Loaded:
    """``data``'s rows, the lines that are not rows, and the unfinished last line (``torn``, ``tail_row``)."""
    loaded = Loaded()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = parse_row(line)
        if isinstance(row, str):
            loaded.skipped.append((number, row))
        else:
            loaded.rows.append(row)
    if tail.strip():
        row = parse_row(tail)
        if tail.startswith(ROW_START):
            loaded.torn = True
            loaded.tail_row = row if isinstance(row, dict) else None
        else:
            loaded.skipped.append((len(lines) + 1, row))
    return loaded


class ResultsFile:
    """The rows of one results file, open for appending under an exclusive lock (module docstring).

    Use it as a context manager (or call ``close``); ``rows`` stays readable after closing."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        self._fd: int | None = None
        self._created = False
        self._size = 0
        self._lock = _Lock(self.path.with_name(self.path.name + ".lock"))
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        _make_parent(self.path)
        self._lock.acquire()
        self._created = not self.path.exists()  # removed again on close when no row was written to it
        try:
            data = b"" if self._created else self.path.read_bytes()
        except OSError as error:
            raise ResultsFileError(f"could not read {self.path}: {error.strerror}") from error
        loaded = _split(data)
        if loaded.skipped or (loaded.torn and not loaded.rows and loaded.tail_row is None):
            number, why = loaded.skipped[0] if loaded.skipped else (1, "an unfinished line")
            kind = "has a line that is not a row" if loaded.rows else "is not a spantrace results file"
            raise ResultsFileError(f"{self.path} {kind} (line {number} is {why}); it was left untouched: "
                                   "give --out a new file, or remove that line if the file is yours")
        seen = set()
        for row in loaded.rows:
            key = (row["sample_id"], row["method"])
            if key not in seen:  # a duplicate can only come from a hand-edited file: keep the first
                seen.add(key)
                self.rows.append(row)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if loaded.torn:  # a row cut by a crash (redone below): only now that every other line is a row
                os.ftruncate(self._fd, data.rfind(b"\n") + 1)
            self._size = os.fstat(self._fd).st_size
        except OSError as error:
            raise ResultsFileError(f"cannot write {self.path} ({error.strerror}); "
                                   "choose a writable --out") from error

    def done(self) -> set[tuple[str, str]]:
        """The (sample_id, method) pairs that have a row."""
        return {(row["sample_id"], row["method"]) for row in self.rows}

    def append(self, row: dict[str, Any]) -> None:
        """Write ``row`` as one line in one write, then fsync; on failure the file is cut back, never torn."""
        if self._fd is None:
            raise SpanTraceError(f"{self.path} is closed; open it again to append")
        data = (json.dumps(row, sort_keys=True) + "\n").encode("utf-8")
        try:
            written = os.write(self._fd, data)
            if written != len(data):  # a short write: the disk filled part-way through the line
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(self._fd)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # take back the part of the line that was written
            raise ResultsFileError(f"could not write a row to {self.path} ({error.strerror}); every earlier row "
                                   "is kept: make room and run the same command again to resume") from error
        self._size += len(data)
        self.rows.append(row)

    def close(self) -> None:
        """Release the file and its lock (idempotent); a file this run created and wrote nothing to is removed."""
        if self._fd is not None:
            if self._created and self._size == 0:
                with contextlib.suppress(OSError):
                    self.path.unlink()  # a run stopped before its first row leaves no empty file behind
            os.close(self._fd)
            self._fd = None
        self._lock.release()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
                 ) -> None:
        self.close()


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResultsFileError(f"cannot create the folder {path.parent} ({error.strerror}); "
                               "choose a writable --out") from error


class _Lock:
    """An exclusive ``flock`` on a sidecar file that holds the owner's PID; the kernel drops it with the process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise ResultsFileError(f"cannot create the lock file {self.path} ({error.strerror}); "
                                       "choose a writable --out") from error
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise ResultsFileError(
                    f"{self.path.name[:-5]} is being written by another run (PID {holder}); wait for it to "
                    "finish, or give --out another file") from None
            if _same_file(fd, self.path):  # not a lock file its last owner removed while we opened it
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # removed while still held, so nobody locks a file on its way out
        os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

