"""Cache of augmented ONNX models: in the process, and on disk so a second CLI call skips the rewrite.

Entries are keyed by the sha256 of the original model, the canonicalization inputs (input shape and
names), the kind of model and its options, a digest of onnxsal's sources and onnx's version. Writes go to a
temporary file in the cache directory and are renamed into place (atomic on POSIX and Windows), so
concurrent writers never leave a torn entry. An entry is used only when its metadata names the same key, its
checksum matches and it has the outputs asked for; otherwise it is deleted and rebuilt (and an entry
onnxruntime cannot load is rebuilt once, see runtime.py). Temporaries of killed runs are removed at start.

Location: $ONNXSAL_CACHE_DIR, else $XDG_CACHE_HOME/onnxsal, else ~/.cache/onnxsal.
ONNXSAL_CACHE=0 turns the disk cache off.

Small facts learned by running a model (whether it takes a batch: runtime.check_batching) are kept on disk
beside its graphs as `<key>.json` records with the same key scheme, so a new process skips the probe.

In memory, everything large the process keeps for reuse (canonical graphs, augmented graphs, onnxruntime
sessions) shares one least-recently-used store with a byte budget, MEMORY: $ONNXSAL_CACHE_MEMORY
("4G", "512M", or bytes; default 4 GiB). A session counts what the process's resident set grew by
while onnxruntime built it, and at least twice its model's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import onnx

_SIZES: dict[int, int] = {}  # id(model) -> serialized bytes, from the read or write just done (see cached_model)
FROM_DISK: set[str] = set()
_ON_DISK: set[str] = set()  # keys whose model this process read from or wrote to the disk cache, checksum verified  # keys whose model was read from the disk cache in this process (not built here)
DEFAULT_CACHE_MEMORY = 4 << 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def memory_budget() -> int:
    """Bytes the in-memory caches may hold together: $ONNXSAL_CACHE_MEMORY ("4G", "512M", "1000000"), else 4 GiB."""
    text = os.environ.get("ONNXSAL_CACHE_MEMORY", "").strip().upper().removesuffix("B").removesuffix("I")
    if not text:
        return DEFAULT_CACHE_MEMORY
    unit = text[-1] if text[-1] in _UNITS else ""
    try:
        return int(float(text[: len(text) - len(unit)]) * _UNITS[unit])
    except ValueError:
        from .errors import OnnxsalError

        raise OnnxsalError(
            f"ONNXSAL_CACHE_MEMORY={os.environ['ONNXSAL_CACHE_MEMORY']!r} is not a size; write e.g. 4G, 512M or a number of bytes"
        ) from None


class ByteLRU:
    """Least-recently-used store whose entries carry their size in bytes; past the budget the oldest go.

    The entry just added always stays (a model larger than the budget still runs, it is just not kept
    next to others). Keys are tuples whose first item says the kind: "graph", "model" or "session".
    """

    def __init__(self, budget: int | None = None):
        self._budget = budget
        self._items: OrderedDict = OrderedDict()
        self.nbytes = 0

    @property
    def budget(self) -> int:
        return self._budget if self._budget is not None else memory_budget()

    def get(self, key):
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key][0]

    def put(self, key, value, nbytes: int):
        if key in self._items:
            self.nbytes -= self._items.pop(key)[1]
        self._items[key] = (value, int(nbytes))
        self.nbytes += int(nbytes)
        budget = self.budget
        while self.nbytes > budget and len(self._items) > 1:
            _, (_, size) = self._items.popitem(last=False)
            self.nbytes -= size
        return value

    def size_of(self, key) -> int | None:
        """Bytes recorded for an entry, or None."""
        item = self._items.get(key)
        return item[1] if item is not None else None

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0

    def discard(self, key) -> None:
        if key in self._items:
            self.nbytes -= self._items.pop(key)[1]

    def kinds(self) -> dict[str, int]:
        """Entries held, by kind."""
        counts: dict[str, int] = {}
        for key in self._items:
            counts[key[0]] = counts.get(key[0], 0) + 1
        return counts

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


MEMORY = ByteLRU()  # canonical graphs, augmented graphs and sessions of this process


def cache_dir() -> Path | None:
    if os.environ.get("ONNXSAL_CACHE", "1") == "0":
        return None
    if os.environ.get("ONNXSAL_CACHE_DIR"):
        return Path(os.environ["ONNXSAL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnxsal"


_CODE_DIGEST: str | None = None


def code_digest() -> str:
    """sha256 over onnxsal's own source files: entries made by other code (an upgrade, an edit) never match."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        h = hashlib.sha256()
        root = Path(__file__).parent
        for path in sorted(root.rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
        _CODE_DIGEST = h.hexdigest()
    return _CODE_DIGEST


def entry_key(graph, kind: str, options) -> str:
    parts = [graph.sha256, repr(graph.input_shape), graph.input_name, graph.output_name, repr(graph.protected), kind,
             repr(options), code_digest(), onnx.__version__]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary and a rename (see files.atomic_write); raises OSError."""
    from .files import atomic_write as write

    write(path, data)


_SWEPT: set[str] = set()


def sweep(directory: Path) -> None:
    """Once per process and folder: delete temporaries that killed runs left in the cache."""
    if str(directory) in _SWEPT:
        return
    _SWEPT.add(str(directory))
    from .files import remove_stale_temporaries

    remove_stale_temporaries(directory, old_style=True)


def entry_file(key: str) -> Path | None:
    """The model file of a disk-cache entry that cached_model just read or wrote in this process, else None."""
    directory = cache_dir()
    if directory is None or key not in _ON_DISK:
        return None
    path = directory / f"{key}.onnx"
    return path if path.is_file() else None


def drop(key: str) -> None:
    """Forget an entry in memory and on disk (it failed to load into a session)."""
    MEMORY.discard(("model", key))
    FROM_DISK.discard(key)
    _ON_DISK.discard(key)
    directory = cache_dir()
    if directory is None:
        return
    for p in (directory / f"{key}.onnx", directory / f"{key}.json"):
        try:
            p.unlink()
        except OSError:
            pass


def _read(directory: Path, key: str, outputs=()) -> tuple[onnx.ModelProto, str] | None:
    """An entry whose stored key, checksum and outputs match; a mismatched or corrupt one is deleted (None)."""
    model_path, meta_path = directory / f"{key}.onnx", directory / f"{key}.json"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key:
            raise ValueError("entry made for another key")
        data = model_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise ValueError("checksum mismatch")
        model = onnx.load_from_string(data)
        names = {o.name for o in model.graph.output}
        if meta["score"] not in names or not set(outputs) <= names:
            raise ValueError("entry lacks the outputs asked for")
        _SIZES[id(model)] = len(data)
        return model, meta["score"]
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a corrupt entry: drop it and rebuild
        for p in (model_path, meta_path):
            try:
                p.unlink()
            except OSError:
                pass
        return None


def cached_model(graph, kind: str, options, build: Callable[[], tuple[onnx.ModelProto, str]], outputs=()):
    """(model, score name) from the process cache, the disk cache, or `build()` (then stored in both).

    `outputs`: names the model must have; a disk entry without them is rebuilt."""
    key = entry_key(graph, kind, options)
    found = MEMORY.get(("model", key))
    if found is not None:
        return found
    directory = cache_dir()
    if directory is not None:
        sweep(directory)
    found = _read(directory, key, outputs) if directory is not None else None
    if found is not None:
        FROM_DISK.add(key)
        _ON_DISK.add(key)
    else:
        FROM_DISK.discard(key)
        found = build()
        if directory is not None:
            try:
                data = found[0].SerializeToString()
                _SIZES[id(found[0])] = len(data)
                atomic_write(directory / f"{key}.onnx", data)
                meta = {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "score": found[1], "kind": kind}
                atomic_write(directory / f"{key}.json", json.dumps(meta).encode())
                _ON_DISK.add(key)
            except OSError:
                pass  # a read-only or full cache directory only costs speed
    # the serialized length is the model's ByteSize(), which protobuf would walk every tensor again to compute
    size = _SIZES.pop(id(found[0]), None)
    return MEMORY.put(("model", key), found, size if size is not None else found[0].ByteSize())


def read_fact(graph, kind: str, options=()) -> dict | None:
    """A fact stored by write_fact for this model, options and code version, else None (a bad record is deleted)."""
    directory = cache_dir()
    if directory is None:
        return None
    key = entry_key(graph, kind, options)
    path = directory / f"{key}.json"
    try:
        record = json.loads(path.read_text())
        if record.get("key") != key or record.get("kind") != kind or not isinstance(record.get("value"), dict):
            raise ValueError("record made for another key")
        return record["value"]
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a corrupt record: drop it, the caller measures again
        try:
            path.unlink()
        except OSError:
            pass
        return None


def write_fact(graph, kind: str, value: dict, options=()) -> None:
    """Store a small JSON fact about this model (see read_fact); a read-only or full cache only costs speed."""
    directory = cache_dir()
    if directory is None:
        return
    key = entry_key(graph, kind, options)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / f"{key}.json", json.dumps({"key": key, "kind": kind, "value": value}).encode())
    except OSError:
        pass
