"""ONNX Runtime sessions over augmented graphs, in batches.

Engine(graph) runs the sessions of one canonical model: a forward session (score and, optionally,
layer activations) and gradient sessions keyed by (layers, rule set, target kind, input gradient,
top-class seed). Inputs larger than the batch size run in chunks; a model that cannot take a batch runs
one sample at a time. Sessions live in the process-wide byte-budgeted LRU (cache.MEMORY) keyed like the
disk cache of augmented graphs plus the providers, so every Engine of the same model shares them.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import InputError, OnnxsalError
from .graph.model import ModelGraph

UNBATCHABLE = "the model does not run with a batch larger than 1; running one sample at a time"
# Bytes of activations a batch may hold (forward + backward), on the CPU. Small on purpose: on a 2-core EPYC the
# per-sample gradient time of MobileNetV2 / EfficientNet-Lite0 is lowest at batch 2 and ~10% higher at 8-16
# (the working set leaves the cache), while per-run overhead is ~0.3 ms.
DEFAULT_MEMORY_BUDGET = 384 << 20
GPU_MEMORY_BUDGET = 8 << 30  # the same with the CUDA provider


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def default_providers() -> list[str]:
    """CUDA first when onnxruntime-gpu is installed and sees a GPU, CPU always last."""
    available = available_providers()
    chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
    return chosen + ["CPUExecutionProvider"]


def session_options():
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # onnxruntime's own log: errors only (no coloured warnings on stderr)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # intra-op threads stop spinning when a run ends: an idle spin burns the cores the next session (onnxsal's
    # forward and gradient sessions alternate, and IG / SmoothGrad chunks overlap numpy work) or another process
    # needs; measured on a 2-core CPU, a gradient run right after another session's took 1.5-2x longer without it
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    threads = os.environ.get("ONNXSAL_THREADS")
    if threads:
        opts.intra_op_num_threads = int(threads)
    return opts


def provider_list(providers: Sequence | None) -> list:
    """Providers with onnxsal's options: CUDA computes in float32 (no TF32 tensor-core rounding, which would
    change gradients at the 1e-3 level) unless ONNXSAL_TF32=1."""
    chosen = []
    for p in providers or default_providers():
        if p == "CUDAExecutionProvider":
            p = (p, {"use_tf32": "1" if os.environ.get("ONNXSAL_TF32") == "1" else "0"})
        chosen.append(p)
    return chosen


def make_session(model_bytes: bytes, providers: Sequence[str] | None):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model_bytes, session_options(), providers=provider_list(providers))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxsalError(f"onnxruntime cannot run the model: {line}") from None


def activation_bytes_per_sample(graph: ModelGraph) -> int:
    """Bytes of one sample's share of every batch-dependent tensor (shape (N, ...), from the inferred shapes)."""
    total = 0
    for shape in graph.shapes.values():
        if shape and shape[0] is None and all(d is not None for d in shape[1:]):
            total += 4 * int(np.prod(shape[1:], dtype=np.int64))
    return max(total, 1)


def default_batch_size(graph: ModelGraph, budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Samples per run so that forward and backward activations (~3x the forward's) fit in `budget`."""
    if graph.batchable is False:
        return 1
    per_sample = 3 * activation_bytes_per_sample(graph)
    return int(max(1, min(64, budget // per_sample)))


def _resident_bytes() -> int:
    """Resident set size of this process in bytes (Linux), else 0."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _as_float32(a: np.ndarray) -> np.ndarray:
    """float16 / bfloat16 results as float32 (double stays double: a float64 model keeps its precision)."""
    return a.astype(np.float32) if a.dtype == np.float16 or a.dtype.name == "bfloat16" else a


@dataclass
class GradientOutputs:
    """Results of one gradient run over a batch (numpy, float32)."""

    scores: np.ndarray  # (N, K...) the explained score tensor
    input_grad: np.ndarray | None
    activations: dict = field(default_factory=dict)  # layer -> (N, ...)
    layer_grads: dict = field(default_factory=dict)  # layer -> (N, ...)
    reference_scores: np.ndarray | None = None  # (N, K...) the score tensor at the reference input (deeplift)


def _size_hint(graph: ModelGraph) -> str:
    """When the user overrode the model's declared input size: say so, since that is the likely cause."""
    resized = next((c for c in graph.choices if " is declared " in c), None)
    if resized is None:
        return ""
    declared = resized.split(" is declared ")[1].split(";")[0]
    return f" -- the model was exported for {declared} and may not run at another size: leave --size out or give its own"


class _Runner:
    """One onnxruntime session; outputs are written by onnxruntime straight into caller-owned arrays."""

    def __init__(self, graph: ModelGraph, model, providers, path=None):
        """`path`: the model's file in the disk cache, when it has one: onnxruntime reads it itself, sparing a
        serialized copy of the weights in this process while the session is built."""
        self.graph = graph
        try:
            self.session = make_session(str(path) if path is not None else model.SerializeToString(), providers)
        except OnnxsalError as exc:
            raise OnnxsalError(f"{exc}{_size_hint(graph)}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_shapes = {o.name: o.shape for o in self.session.get_outputs()}
        self.cached_in = None  # the cache folder the graph was read from, named in run-time errors
        self.max_batch = 0  # the largest batch run so far (Engine.uniform_batches pads smaller ones up to it)
        self.output_types = {o.name: o.type for o in self.session.get_outputs()}

    def allocate(self, names: list[str], batch: int) -> list[np.ndarray] | None:
        """float32 arrays for whole-batch outputs, or None when an output's shape is not static or its type is
        not float32 (a float16 layer of a mixed-precision model: run() returns it and the caller converts)."""
        arrays = []
        for name in names:
            shape = self.output_shapes.get(name)
            if shape is None or any(not isinstance(d, int) for d in shape[1:]):
                return None
            if self.output_types.get(name) != "tensor(float)":
                return None
            arrays.append(np.empty((batch,) + tuple(shape[1:]), dtype=np.float32))
        return arrays

    def run(self, outputs: list[str], feeds: dict, into: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """Run; with `into` (C-contiguous float32 views, one per output) onnxruntime fills them in place (IOBinding)."""
        try:
            if into is None:
                return self.session.run(outputs, feeds)
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            for name, target in zip(outputs, into):
                binding.bind_output(name, "cpu", 0, np.float32, list(target.shape), target.ctypes.data)
            self.session.run_with_iobinding(binding)
            return into
        except Exception as exc:  # noqa: BLE001
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = f" (graph read from the cache in {self.cached_in}; ONNXSAL_CACHE=0 bypasses it)" if self.cached_in else ""
            raise OnnxsalError(f"onnxruntime failed while running the model: {line}{where}{_size_hint(self.graph)}") from None


class Engine:
    """Sessions of one canonical model, run in batches."""

    def __init__(self, graph: ModelGraph, providers: Sequence[str] | None = None, batch_size: int | None = None):
        self.graph = graph
        self.providers = list(providers) if providers else default_providers()
        self._reference_uses: dict[str, int] = {}  # reference digest -> calls (folded_reference_runner)
        # does a reference of batch 1 broadcast against the batch in this graph (None: not tried yet)? Not where the
        # graph folds the batch into another axis; Engine.gradients then gives each image its copy
        self.shared_reference: bool | None = None
        # pad every run of a session to the largest batch it has run: onnxruntime's CUDA provider re-plans a graph
        # whenever the batch shape changes between runs, which cost 0.45-1.5 s per change on an H200 (MobileNetV2
        # IG-50 in chunks of 8 and a last one of 2: 3.3 s, against 59 ms in one chunk of 50; ResNet-50 gradients of
        # 27 images as 26 + 1: 475 ms, one run of 27: 26 ms; benchmarks/results/cuda-h200-2026-11-30-chunk-shapes.txt).
        # On the CPU a change costs nothing measurable, and padding would cost its rows. ONNXSAL_UNIFORM_BATCHES=1/0
        # forces it on or off (other providers).
        forced = os.environ.get("ONNXSAL_UNIFORM_BATCHES")
        self.uniform_batches = forced == "1" if forced in ("0", "1") else "CUDAExecutionProvider" in self.providers
        from .cache import cache_dir, sweep
        from .safety import check_model_memory

        if cache_dir() is not None:
            sweep(cache_dir())  # temporaries of killed runs, once per process
        check_model_memory(graph)  # before the first allocation (the batch probe below)
        if graph.batchable is None:
            # the probe (a session built and run three times, ~0.1-0.2 s) runs once per model and code version:
            # its answer is kept in the disk cache beside the augmented graphs
            known = cache_fact = None
            if cache_dir() is not None:
                from .cache import read_fact

                cache_fact = read_fact(graph, "batchable", repr(provider_list(self.providers)))
                known = cache_fact.get("batchable") if cache_fact else None
            if isinstance(known, bool):
                graph.batchable = known
                if not known:
                    graph.notes.append(UNBATCHABLE)
            else:
                check_batching(self)
                if cache_dir() is not None:
                    from .cache import write_fact

                    write_fact(graph, "batchable", {"batchable": bool(graph.batchable)}, repr(provider_list(self.providers)))
        if not graph.batchable:
            warnings.warn(UNBATCHABLE, stacklevel=3)
        budget = GPU_MEMORY_BUDGET if "CUDAExecutionProvider" in self.providers else DEFAULT_MEMORY_BUDGET
        self.batch_size = 1 if not graph.batchable else (batch_size or default_batch_size(graph, budget))
        check_model_memory(graph, self.batch_size)

    # -- sessions
    def _runner(self, kind: str, options: tuple, build, outputs=()) -> tuple[_Runner, str]:
        """A session for an augmented model: from the process's store, else built from the (disk-cached) model.

        `outputs`: names the model must have (a cache entry without them is rebuilt); a disk entry that
        onnxruntime refuses is rebuilt once."""
        from . import cache

        key = ("session", cache.entry_key(self.graph, kind, options), repr(provider_list(self.providers)))
        found = cache.MEMORY.get(key)
        if found is None:
            model, score = cache.cached_model(self.graph, kind, options, build, outputs)
            nbytes = cache.MEMORY.size_of(("model", key[1])) or model.ByteSize()
            before = _resident_bytes()
            try:
                runner = _Runner(self.graph, model, self.providers, path=cache.entry_file(key[1]))
            except OnnxsalError:
                if key[1] not in cache.FROM_DISK:
                    raise  # a graph built just now: the model's problem, not the cache's
                cache.drop(key[1])
                model, score = cache.cached_model(self.graph, kind, options, build, outputs)
                runner = _Runner(self.graph, model, self.providers)
            if key[1] in cache.FROM_DISK:
                runner.cached_in = cache.cache_dir()
            # the session is what is reused: the augmented proto need not stay in memory beside it (a second session
            # of it, for other providers, reads it from the disk cache again)
            del model
            if cache.cache_dir() is not None:
                cache.MEMORY.discard(("model", key[1]))
            # what the session costs: the growth of the resident set while onnxruntime built it (its copies of
            # the initializers, pre-packed weights, arenas), at least twice the model where that cannot be read
            size = max(_resident_bytes() - before, 2 * nbytes) if before else 2 * nbytes
            found = cache.MEMORY.put(key, (runner, score), size)
        return found

    def forward_runner(self, target_kind: str = "logit", layers: Sequence[str] = ()) -> tuple[_Runner, str]:
        from .autodiff.augment import forward_model

        return self._runner("forward", (target_kind, tuple(layers)), lambda: forward_model(self.graph, target_kind, layers),
                            tuple(layers))

    def _gradient_spec(self, layers: Sequence[str], ruleset: str, target_kind: str, input_grad: bool, top: bool):
        """(kind, options, build, outputs) of the augmented gradient model, as _runner and cache.cached_model take them."""
        from .autodiff import augment

        return ("gradient", (tuple(layers), ruleset, target_kind, input_grad, top),
                lambda: augment.gradient_model(self.graph, layers, ruleset, target_kind, input_grad, top=top),
                ([f"{self.graph.input_name}_grad"] if input_grad else []) + [n for l in layers for n in (l, f"{l}_grad")])

    def gradient_runner(self, layers: Sequence[str], ruleset: str, target_kind: str, input_grad: bool,
                        top: bool = False) -> tuple[_Runner, str]:
        return self._runner(*self._gradient_spec(layers, ruleset, target_kind, input_grad, top))

    def reference_broadcasts(self, ruleset: str, target_kind: str = "logit") -> bool:
        """Whether a reference of batch 1 serves a batch in this graph (Engine.shared_reference), trying a batch of 2
        once if no call has told yet. False where the graph folds the batch into another axis."""
        if self.shared_reference is None and self.graph.batchable:
            shape = tuple(self.graph.input_shape[1:])
            x = np.random.default_rng(0).standard_normal((2, *shape), dtype=np.float32)
            self.gradients(x, None, ruleset=ruleset, target_kind=target_kind, reference=np.zeros((1, *shape), np.float32))
        return self.shared_reference is not False

    def folded_reference_runner(self, spec: tuple, reference: np.ndarray) -> tuple[_Runner, str] | None:
        """A session whose reference input is a constant (one sample), so that onnxruntime's constant folding runs
        the reference forward pass once, when the session is built, instead of in every call: DeepLIFT with the same
        baseline image after image (black, zeros, a data-set mean) then costs one forward pass less per call.

        Built on the second call with the same reference (one-off references, e.g. each photo's own blur, never
        pay for a session); kept in the process's byte-bounded session store. None until then."""
        import copy
        import hashlib

        from onnx import numpy_helper

        from . import cache
        from .autodiff.augment import reference_input

        digest = hashlib.blake2b(reference.tobytes(), digest_size=16).hexdigest() + repr(reference.shape)
        uses = self._reference_uses
        uses[digest] = uses.pop(digest, 0) + 1
        while len(uses) > 16:
            uses.pop(next(iter(uses)))
        if uses[digest] < 2:
            return None
        kind, options, build, outputs = spec
        key = ("folded-session", cache.entry_key(self.graph, kind, options), digest, repr(provider_list(self.providers)))
        found = cache.MEMORY.get(key)
        if found is None:
            model, score = cache.cached_model(self.graph, kind, options, build, outputs)
            model = copy.deepcopy(model)
            name = reference_input(self.graph)
            kept = [i for i in model.graph.input if i.name != name]
            del model.graph.input[:]
            model.graph.input.extend(kept)
            model.graph.initializer.append(numpy_helper.from_array(reference, name))
            runner = _Runner(self.graph, model, self.providers)
            size = 2 * model.ByteSize()
            del model
            if cache.cache_dir() is not None:  # as _runner: the unfolded proto can be read from disk again
                cache.MEMORY.discard(("model", cache.entry_key(self.graph, kind, options)))
            found = cache.MEMORY.put(key, (runner, score), size)
        return found

    # -- running
    def _check_input(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        expected = self.graph.input_shape
        if x.ndim != len(expected) or any(e is not None and e != d for e, d in zip(expected[1:], x.shape[1:])):
            want = "x".join("N" if d is None else str(d) for d in expected)
            raise InputError(f"input batch has shape {x.shape}, the model expects {want}")
        from onnx import helper

        return np.ascontiguousarray(x, dtype=helper.tensor_dtype_to_np_dtype(self.graph.input_dtype))

    def _chunk_size(self, batch_size: int | None = None) -> int:
        return 1 if not self.graph.batchable else max(1, batch_size or self.batch_size)

    def chunks(self, n: int, batch_size: int | None = None):
        size = self._chunk_size(batch_size)
        for start in range(0, n, size):
            yield slice(start, min(n, start + size))

    def forward(self, x: np.ndarray, target_kind: str = "logit", layers: Sequence[str] = (),
                batch_size: int | None = None) -> tuple[np.ndarray, dict]:
        """(scores, {layer: activations}) for a batch."""
        x = self._check_input(x)
        runner, score = self.forward_runner(target_kind, layers)
        names = [score, *layers]
        joined = self._run_chunks(runner, names, x, {}, batch_size)
        return joined[0], dict(zip(layers, joined[1:]))

    def _run_chunks(self, runner: _Runner, names: list[str], x: np.ndarray, per_sample: dict,
                    batch_size: int | None = None, shared: dict | None = None) -> list[np.ndarray]:
        """Outputs `names` for the whole batch, run in chunks; each chunk is written into its slice of the result.
        per_sample feeds are sliced like x; shared ones are fed whole to every chunk."""
        whole = runner.allocate(names, len(x)) if x.dtype == np.float32 else None
        parts: list[list] = [[] for _ in names]
        for sl in self.chunks(len(x), batch_size):
            feeds = {self.graph.input_name: x[sl], **{k: v[sl] for k, v in per_sample.items()}, **(shared or {})}
            m = sl.stop - sl.start
            # one batch shape per session: the chunk is padded with copies of its last sample, and only its own rows
            # are kept; never beyond this engine's chunk size (the session may be another Explainer's too)
            pad_to = min(runner.max_batch, self._chunk_size(batch_size))
            if self.uniform_batches and m < pad_to:
                extra = pad_to - m
                for k in [self.graph.input_name, *per_sample]:
                    feeds[k] = np.concatenate([feeds[k], np.repeat(feeds[k][-1:], extra, axis=0)])
                outputs = [o[:m] for o in runner.run(names, feeds)]
                for i, o in enumerate(outputs):
                    if whole is not None:
                        whole[i][sl] = o
                    else:
                        parts[i].append(o)
                continue
            runner.max_batch = max(runner.max_batch, m)
            if whole is not None:
                runner.run(names, feeds, into=[a[sl] for a in whole])
            else:
                for store, value in zip(parts, runner.run(names, feeds)):
                    store.append(value)
        if whole is not None:
            return whole
        # float16 / bfloat16 tensors of the graph come back as float32
        return [_as_float32(np.concatenate(p)) for p in parts]

    def gradients(self, x: np.ndarray, seed: np.ndarray | None, layers: Sequence[str] = (), ruleset: str = "gradient",
                  target_kind: str = "logit", input_grad: bool = True, reference: np.ndarray | None = None) -> GradientOutputs:
        """Scores, d sum(seed*score)/dx and the layers' activations and gradients, for one batch (chunked as needed).

        seed=None explains each sample's top class, chosen inside the graph (no extra forward pass).
        reference: the reference input of rule sets with a reference pass (DeepLIFT's multipliers): shaped like x,
            or one sample (1, ...) that serves every image (its forward pass then runs once per chunk, at batch 1).
        """
        from .autodiff.augment import reference_input
        from .autodiff.registry import needs_reference

        x = self._check_input(x)
        if needs_reference(ruleset) != (reference is not None):
            raise OnnxsalError(f"the {ruleset} rule set {'needs' if reference is None else 'takes no'} reference input")
        if reference is not None:
            reference = self._check_input(reference)
            if reference.shape[1:] != x.shape[1:] or len(reference) not in (1, len(x)):
                raise InputError(f"the reference input has shape {reference.shape}, the input {x.shape}: give one "
                                 "reference per image or one for all")
            if len(reference) == 1 < len(x) and self.shared_reference is False:
                reference = np.repeat(reference, len(x), axis=0)
        spec = self._gradient_spec(layers, ruleset, target_kind, input_grad, seed is None)
        runner, score = self._runner(*spec)
        folded = None
        if reference is not None and len(reference) == 1:
            folded = self.folded_reference_runner(spec, reference)
            if folded is not None:
                runner, score = folded
        seed_name = runner.input_names[-1] if seed is not None else None
        names = [score] + ([f"{self.graph.input_name}_grad"] if input_grad else [])
        for layer in layers:
            names += [layer, f"{layer}_grad"]
        per_sample = {} if seed is None else {seed_name: np.asarray(seed, dtype=x.dtype)}
        shared = {}
        if reference is not None:
            if folded is None:  # else the session holds it as a constant
                (shared if len(reference) == 1 else per_sample)[reference_input(self.graph)] = reference
            names.append(f"{score}_reference")
        broadcast = reference is not None and len(reference) == 1 < len(x) and self._chunk_size() > 1
        try:
            joined = self._run_chunks(runner, names, x, per_sample, shared=shared)
        except OnnxsalError:
            if not broadcast:
                raise
            # a graph that folds the batch into another axis ((N*C, ...) reshapes, Swin's windows, video frames)
            # cannot broadcast a reference pass run at batch 1: from now on this engine gives each image its copy
            self.shared_reference = False
            return self.gradients(x, seed, layers, ruleset, target_kind, input_grad, np.repeat(reference, len(x), axis=0))
        if broadcast:
            self.shared_reference = True
        out = GradientOutputs(scores=joined[0], input_grad=joined[1] if input_grad else None)
        rest = joined[2:] if input_grad else joined[1:]
        for i, layer in enumerate(layers):
            out.activations[layer] = rest[2 * i]
            out.layer_grads[layer] = rest[2 * i + 1]
        if reference is not None:
            out.reference_scores = joined[-1]
        return out


def check_batching(engine: Engine) -> None:
    """Decide graph.batchable: does a batch of 2 give the same scores as two runs of 1?"""
    graph = engine.graph
    runner, score = engine.forward_runner()
    shape = tuple(2 if d is None else d for d in graph.input_shape)
    from onnx import helper

    import onnxruntime as ort

    # float32 draws (a float64 draw of a large input would double the probe's memory), then the input's type
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32).astype(
        helper.tensor_dtype_to_np_dtype(graph.input_dtype), copy=False)
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a failing batch of 2 is an answer here, not an error to print
    try:
        both = runner.session.run([score], {graph.input_name: x}, quiet)[0]
        single = np.concatenate([runner.session.run([score], {graph.input_name: x[i:i + 1]})[0] for i in range(2)])
        finite = np.abs(single[np.isfinite(single)])  # NaN scores (NaN weights) are reported later, by the caller
        scale = float(finite.max()) if finite.size else 0.0
        ok = both.shape == single.shape and np.allclose(both, single, rtol=1e-3, atol=1e-4 * (scale + 1), equal_nan=True)
    except Exception:  # noqa: BLE001 - any failure with batch 2 means: not batchable
        ok = False
    graph.batchable = bool(ok)
    if not ok:
        graph.notes.append(UNBATCHABLE)
