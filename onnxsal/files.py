"""Files in and out: regular-file checks on inputs, atomic writes with one-line errors, unique output names,
and the removal of temporaries left by runs that were killed.

Every write goes to `.<name>.<pid>.<random>.tmp` in the destination folder and is renamed into place, so a
reader never sees half a file. A run killed with SIGKILL (or a power cut) leaves its temporary behind;
`remove_stale_temporaries` deletes those whose process is gone, so concurrent runs never lose a file
that is still being written.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterable

from .errors import InputError, OnnxsalError


class OutputError(OnnxsalError):
    """An output (file or folder) that cannot be written."""


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")
_OLD_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")  # onnxsal before pids were in the name
STALE_AFTER_S = 3600.0  # a temporary older than this is stale whatever its process (pids are reused)


# -- inputs ---------------------------------------------------------------------------------------------

def require_regular(path, what: str = "image", error: type[OnnxsalError] = InputError) -> Path:
    """`path` if it names a regular file; else `error` with one line (missing, a folder, a pipe, unreadable).

    Pipes, devices and sockets are refused: reading one can block forever and it cannot be read twice.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise error(f"cannot read {what} file {path}: {reason(exc)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{path} is a directory, not an {what} file" if what[0] in "aeiou" else
                    f"{path} is a directory, not a {what} file")
    if not stat.S_ISREG(info.st_mode):
        kind = "a pipe" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) else "a device"
        raise error(f"{path} is {kind}, not a regular file; save the {what} to a file and give its path")
    return path


# -- writes ---------------------------------------------------------------------------------------------

_ADVICE = {
    errno.ENOSPC: "no space left on device; free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
    errno.EROFS: "read-only file system; choose a folder you can write to",
    errno.EISDIR: "a folder has that name; remove it or choose another name",
    errno.ENOTDIR: "a file is in the way where a folder should be; choose another path",
    errno.EEXIST: "a file is in the way where a folder should be; choose another path",
    errno.EFBIG: "file too large for the file-size limit (ulimit -f)",
    errno.ENAMETOOLONG: "the name is too long",
}


def reason(exc: OSError) -> str:
    """The cause of an OSError in words, with what to do for the common ones."""
    if exc.errno in _ADVICE:
        return _ADVICE[exc.errno]
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[0].lower() + text[1:]


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary in the same folder and a rename; raises OSError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a finished file gets the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_output(path, data: bytes) -> None:
    """atomic_write with one-line errors that name `path` (never the temporary)."""
    path = Path(path)
    try:
        atomic_write(path, data)
    except OSError as exc:
        if isinstance(exc, (FileExistsError, NotADirectoryError)) or exc.errno in (errno.EEXIST, errno.ENOTDIR):
            raise OutputError(f"cannot create folder {path.parent}: {_ADVICE[errno.ENOTDIR]}") from None
        raise OutputError(f"cannot write {path}: {reason(exc)}") from None


def make_folder(folder) -> Path:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if isinstance(exc, FileExistsError):
            raise OutputError(f"cannot create folder {folder}: a file has that name; choose another --out") from None
        raise OutputError(f"cannot create folder {folder}: {reason(exc)}") from None
    return folder


# -- output names ---------------------------------------------------------------------------------------

class OutputNames:
    """Output stems that are unique in a run and, unless `overwrite`, against the files already in `folder`.

    claim("cat", ["_grad_cam.png"]) gives "cat", then "cat-2", "cat-3", ... A stem is free when none of its
    names (stem + each suffix) was used earlier in this run or, without overwrite, exists in the folder.
    """

    def __init__(self, folder, overwrite: bool = False):
        self.folder = Path(folder)
        self.overwrite = overwrite
        self.used: set[str] = set()

    def _free(self, names: list[str]) -> bool:
        if any(n in self.used for n in names):
            return False
        return self.overwrite or not any(os.path.lexists(self.folder / n) for n in names)

    def claim(self, stem: str, suffixes: Iterable[str]) -> str:
        suffixes = list(suffixes)
        candidate, n = stem, 1
        while not self._free([candidate + s for s in suffixes]):
            n += 1
            candidate = f"{stem}-{n}"
        self.used.update(candidate + s for s in suffixes)
        return candidate


# -- stale temporaries ----------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process
    return True


def remove_stale_temporaries(folder, old_style: bool = False, endings: tuple[str, ...] | None = None) -> int:
    """Delete temporaries in `folder` left by onnxsal runs that died; returns how many were removed.

    A temporary is stale when its process is gone (and it is a few seconds old), or when it is older than
    STALE_AFTER_S; `old_style` also removes nameless-pid temporaries of earlier versions past that age; with
    `endings`, only temporaries of files whose names end so (".png", ".npy") are touched.
    Never raises: a folder that cannot be listed or a file another run removed first is simply skipped.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    now = time.time()
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match and not (old_style and _OLD_TEMP.match(entry.name)):
            continue
        if endings is not None and not (match and match.group("name").endswith(endings)):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        stale = age > STALE_AFTER_S or (match is not None and age > 5 and not _alive(int(match.group("pid"))))
        if stale:
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed
