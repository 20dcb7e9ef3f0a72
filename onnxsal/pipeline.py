"""Explanations at dataset scale: a streaming, resumable run over many images.

Stages (each usable alone): read_inputs (folders, glob patterns, CSV / JSON-lines lists of path[,target])
-> decode + preprocess (a thread pool, a bounded window of images in flight) -> explain (batches sized by
the memory budget) -> render + write (background threads, bounded queue) -> index (one JSON line per
image and method, appended only after its files are complete, flushed and fsynced).

Resuming: an index entry's key is the sha256 of the image bytes, the model's digest, and a digest of
every setting that changes the result (method and options, target and target kind, layer, preprocessing,
map format). Re-running the same command skips the keys already in the index; a torn last line (a kill
mid-write) is ignored and redone. Output files are named <stem>-<first 8 hex of the image sha256>_<method>,
so a rerun writes the same names and two images with the same stem never collide.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import InputError
from .files import OutputError

from .workflow import IMAGE_SUFFIXES


@dataclass
class Item:
    path: Path
    target: object = None  # a class index or name from the list file, else None (the run's target)


def read_inputs(specs: Iterable[str]) -> list[Item]:
    """Items from folders (the images inside, sorted), glob patterns, files, and .csv / .jsonl lists.

    A CSV row is `path[,target]` (a header row naming `path` is skipped); a JSON line is
    {"path": ..., "target": ...}. Relative paths in a list are relative to the list's folder.
    """
    items: list[Item] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            if not found:
                raise InputError(f"directory {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            items += [Item(p) for p in found]
        elif path.suffix.lower() == ".csv" and path.is_file():
            items += _csv_items(path)
        elif path.suffix.lower() in (".jsonl", ".ndjson") and path.is_file():
            items += _jsonl_items(path)
        elif any(ch in spec for ch in "*?[") and not path.exists():
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise InputError(f"the pattern {spec!r} matches no image files")
            items += [Item(p) for p in matches]
        else:
            items.append(Item(path))
    return items


def _target_value(text):
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, (int, np.integer)):
        return int(text)
    text = str(text).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def _csv_items(path: Path) -> list[Item]:
    items = []
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row or not row[0].strip() or row[0].startswith("#"):
                continue
            if n == 1 and row[0].strip().lower() == "path":
                continue
            if len(row) > 2:
                raise InputError(f"{path}:{n}: a row is path[,target], not {len(row)} fields")
            items.append(Item(path.parent / row[0].strip(), _target_value(row[1] if len(row) > 1 else None)))
    return items


def _jsonl_items(path: Path) -> list[Item]:
    items = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            raise InputError(f'{path}:{n}: each line is {{"path": ..., "target": ...}}')
        items.append(Item(path.parent / row["path"], _target_value(row.get("target"))))
    return items


class Index:
    """The run's index: JSON lines, one per finished (image, method), appended atomically enough to resume."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.done: dict[str, dict] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn line from a killed run: that image is redone
                if isinstance(entry, dict) and "key" in entry:
                    self.done[entry["key"]] = entry

    def append(self, entry: dict) -> None:
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a") as f:
                    if f.tell() and not self._ends_with_newline():
                        f.write("\n")  # a torn last line stays apart from the next entry
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                from .files import reason

                raise OutputError(f"cannot write {self.path}: {reason(exc)}") from None
            self.done[entry["key"]] = entry

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


@dataclass
class Settings:
    """Everything besides the image and model that changes a result (hashed into each entry's key)."""

    method: str
    options: dict
    target: object
    target_kind: str
    layer: str | None
    preprocessing: dict
    fmt: str
    map_dtype: str

    def digest(self) -> str:
        text = json.dumps({k: v for k, v in self.__dict__.items()}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Summary:
    done: int = 0  # (image, method) results written in this run
    skipped: int = 0  # already in the index
    failed: list = field(default_factory=list)  # (path, reason)
    images: int = 0
    seconds: float = 0.0


def explain_dataset(explainer, items: list[Item], methods: list[str], target, method_options: Callable[[str], dict],
                    out: Path, fmt: str = "png", map_dtype: str = "float16", index_path: Path | None = None,
                    workers: int = 2, batch: int = 16, cmap=None, alpha: float = 0.6, fail_fast: bool = False,
                    progress: Callable[[float], None] | None = None, report: Callable[[str], None] = print) -> Summary:
    """Explain every item with every method, streaming; see the module docstring. Returns a Summary."""
    from . import viz
    from .preprocess import decode_image
    from .safety import images_per_chunk
    from .workflow import display_photo, picture

    if fmt not in ("png", "npy", "both", "none"):
        raise InputError(f"format is png, npy, both or none, not {fmt!r}")
    if map_dtype not in ("float16", "float32"):
        raise InputError(f"map dtype is float16 or float32, not {map_dtype!r}")
    out = Path(out)
    index = Index(index_path or out / "index.jsonl")
    prep = explainer.preprocessing
    digest = explainer.graph.sha256
    per_method = {m: method_options(m) for m in methods}
    layer = explainer._layer_spec
    summary = Summary()
    start = time.perf_counter()
    chunk = images_per_chunk(explainer.graph, max(1, batch))

    prep_dict = prep.to_dict()
    keys: dict = {}

    def key(sha: str, method: str, row_target) -> str:
        """The index key of one image and method; the settings' digest is computed once per (method, target)."""
        digest_of = keys.get((method, row_target))
        if digest_of is None:
            digest_of = keys[(method, row_target)] = Settings(
                method, per_method[method], row_target if row_target is not None else target, explainer.target_kind,
                layer, prep_dict, fmt, map_dtype).digest()
        return hashlib.sha256(f"{sha}\0{digest}\0{digest_of}".encode()).hexdigest()[:32]

    def read(item: Item):
        """(item, sha256, image) or (item, None, reason); runs in the decode pool."""
        from .files import reason, require_regular

        try:
            path = require_regular(item.path, "image")
            data = path.read_bytes()
        except InputError as exc:
            return item, None, str(exc)
        except OSError as exc:
            return item, None, f"cannot read {item.path}: {reason(exc)}"
        sha = hashlib.sha256(data).hexdigest()
        wanted = [m for m in methods if key(sha, m, item.target) not in index.done]
        if not wanted:
            return item, sha, None
        try:
            return item, sha, (decode_image(data, item.path), len(methods) - len(wanted))
        except InputError as exc:
            return item, None, str(exc)

    writes: queue.Queue = queue.Queue(maxsize=4 * chunk)
    write_errors: list = []

    def writer():
        while True:
            job = writes.get()
            if job is None:
                return
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - reported in the main thread
                write_errors.append(exc)

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(max(1, workers))]
    for t in threads:
        t.start()

    def write_job(item, sha, photo, res, k, method, top):
        stem = f"{item.path.stem}-{sha[:8]}"
        files = {}
        if fmt in ("png", "both"):
            path = out / f"{stem}_{method}.png"
            viz.save_png(picture(res, k, display_photo(photo, prep), method, cmap, alpha), path)
            files["png"] = str(path)
        if fmt in ("npy", "both"):
            path = out / f"{stem}_{method}.npy"
            viz.save_npy(res.maps[k].astype(map_dtype), path)
            files["npy"] = str(path)
        entry = {
            "key": key(sha, method, item.target), "image": str(item.path), "sha256": sha,
            "model": digest, "method": method, "options": per_method[method], "target_kind": res.target_kind,
            "target": _describe(explainer, res, k), "class": int(res.targets[k]), "score": float(res.scores[k]),
            "output": res.output, "top": [[c, name, round(p, 6)] for c, name, p in top], "files": files,
            "delta": None if res.delta is None else float(res.delta[k]),
        }
        index.append(entry)

    def flush_batch(ready):
        if not ready:
            return
        x = prep.batch([img for _, _, img in ready])
        tops = None  # from the first method's logits when it has them (no extra forward pass)
        for method in methods:
            todo = [i for i, (item, sha, _) in enumerate(ready) if key(sha, method, item.target) not in index.done]
            if not todo:
                continue
            goal = _batch_target(explainer, target, [ready[i][0] for i in todo])
            res = explainer.explain(x[todo], method, target=goal, **per_method[method])
            if tops is None:
                tops = (explainer.top_from_logits(res.logits, 3) if res.logits is not None and len(todo) == len(ready)
                        else explainer.top_classes(x, 3))
            for k, i in enumerate(todo):
                item, sha, photo = ready[i]
                job = (lambda item=item, sha=sha, photo=photo, res=res, k=k, method=method, top=tops[i]:
                       write_job(item, sha, photo, res, k, method, top))
                writes.put(job)
                summary.done += 1
        if progress:
            progress(len(ready))

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            ready: list = []
            window = 2 * chunk  # images decoded ahead: memory stays flat however long the list is
            pending = []
            it = iter(items)
            exhausted = False
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        pending.append(pool.submit(read, next(it)))
                    except StopIteration:
                        exhausted = True
                if not pending:
                    break
                item, sha, image = pending.pop(0).result()
                summary.images += 1
                if sha is None:
                    if fail_fast:
                        raise InputError(image)
                    summary.failed.append((str(item.path), image))
                    report(f"warning: {image}; skipped")
                    if progress:
                        progress(1)
                    continue
                if image is None:
                    summary.skipped += len(methods)
                    if progress:
                        progress(1)
                    continue
                image, already = image
                summary.skipped += already
                ready.append((item, sha, image))
                if len(ready) >= chunk:
                    flush_batch(ready)
                    ready = []
                if write_errors:
                    raise write_errors[0]
            flush_batch(ready)
    finally:
        for _ in threads:
            writes.put(None)
        for t in threads:
            t.join()
    if write_errors:
        raise write_errors[0]
    summary.seconds = time.perf_counter() - start
    return summary


def _batch_target(explainer, target, items: list[Item]):
    """The run's target, or per-sample class indices where the list gave them."""
    if all(item.target is None for item in items):
        return target
    from .workflow import parse_target

    classes = []
    for item in items:
        chosen = parse_target(str(item.target), explainer.labels, explainer.num_classes) if item.target is not None else target
        if isinstance(chosen, str):  # "top" on some rows, classes on others
            raise InputError("a list that gives targets must give one on every row (or none): mixing rows with and "
                             "without a target is not supported yet")
        classes.append(int(chosen))
    return classes


def _describe(explainer, res, k: int) -> str:
    from .workflow import _target_text

    return _target_text(explainer, res, k)
