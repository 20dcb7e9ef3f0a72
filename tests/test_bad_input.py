"""Bad input, faults and resource limits (issue 11): every refusal is one line on stderr (`error: ...`), a
documented exit code (1 bad input, 2 bad command line, 130/143 signals), and no partial output.

Fixtures are made at test time: tiny hand-built ONNX models (Conv -> Relu -> GlobalAveragePool -> Gemm) and
small generated photos, so most cases run in well under a second.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxsal.cli import main

ROOT = Path(__file__).resolve().parents[1]


# -- fixtures -------------------------------------------------------------------------------------------

def tiny_model(path: Path, size=(32, 32), dynamic=False, nan=False, classes=5, op="Relu", domain="") -> Path:
    """x (N,3,H,W) -> Conv 3->4 -> op -> GlobalAveragePool -> Flatten -> Gemm -> (N, classes)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
    fc = rng.standard_normal((classes, 4)).astype(np.float32)
    if nan:
        fc[0, 0] = np.nan
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c"], ["r"], domain=domain),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    dims = ["N", 3, "H", "W"] if dynamic else [1, 3, *size]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], classes])],
                              [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
                               helper.make_tensor("fc", TensorProto.FLOAT, fc.shape, fc.ravel())])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    return path


def photo(path: Path, size=(64, 48), fmt=None) -> Path:
    from PIL import Image

    pixels = np.random.default_rng(len(str(path))).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height pixels and holds none (what a decompression bomb's header says)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.fixture()
def work(tmp_path, monkeypatch):
    """A scratch folder (the current directory) with a tiny model and a photo."""
    monkeypatch.chdir(tmp_path)
    tiny_model(tmp_path / "tiny.onnx")
    photo(tmp_path / "cat.png")
    return tmp_path


def cli(args, env=None):
    return CliRunner(env=env).invoke(main, [str(a) for a in args])


def refused(result, code: int, *patterns: str) -> str:
    """Exit code `code`; stderr is exactly one line, `error: ...`, containing every pattern; no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for pattern in patterns:
        assert pattern in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Everything in `folder` (recursively) that is a file: what a refused run must not leave behind."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in Path(folder).rglob(".*.tmp")] if Path(folder).exists() else []


def explain(*args):
    return ["explain", "--model", "tiny.onnx", "--method", "saliency", "-q", *args]


# -- 1. non-finite and out-of-range values --------------------------------------------------------------

@pytest.mark.parametrize("flags,pattern", [
    (["--noise-level", "nan", "--method", "smoothgrad"], "'--noise-level': it must be a finite number, not nan"),
    (["--noise-level", "-1", "--method", "smoothgrad"], "'--noise-level': it must be at least 0, not -1"),
    (["--baseline", "nan", "--method", "integrated_gradients"], "--baseline must be a finite number"),
    (["--baseline", "black+inf", "--method", "integrated_gradients"], "--baseline must be a finite number"),
    (["--std", "nan"], "--std must be a finite number"),
    (["--std", "0.2,-0.1,0.2"], "--std must be greater than 0"),
    (["--mean", "inf"], "--mean must be a finite number"),
    (["--scale", "nan"], "'--scale': it must be a finite number"),
    (["--scale", "0"], "'--scale': it must not be 0"),
    (["--crop", "nan"], "'--crop': it must be a finite number"),
    (["--alpha", "nan"], "'--alpha': it must be a finite number"),
    (["--tolerance", "inf", "--method", "integrated_gradients"], "'--tolerance': it must be a finite number"),
    (["--tolerance", "0", "--method", "integrated_gradients"], "'--tolerance': it must be greater than 0"),
])
def test_non_finite_and_out_of_range_flags(work, flags, pattern):
    refused(cli(explain("cat.png", "--out", "out", *flags)), 2, pattern)
    assert leftovers(work / "out") == []


@pytest.mark.parametrize("sidecar,pattern", [
    ('{"std": [0.2, NaN, 0.2]}', "std must be a finite number, not nan"),
    ('{"scale": Infinity}', "scale must be a finite number, not inf"),
    ('{"mean": -Infinity}', "mean must be a finite number"),
    ('{"std": -1}', "std must be greater than 0"),
    ('{"crop": 1.5}', "crop must be at most 1"),
    ('{"size": "abc"}', "size is a number of pixels or HxW (e.g. 224 or 48x192), not 'abc'"),
    ('{"size": 22.5}', "size must be a whole number"),
    ('{"scale": "1/255"}', "scale must be a number, not '1/255'"),
    ('{"mean": {"r": 1}}', "mean must be a number or a list"),
    ('{"bgr": "yes"}', "bgr must be true or false"),
    ('{"layout": 4}', "layout must be a string"),
    ('["size", 32]', "must hold a table of settings"),
])
def test_bad_sidecar_fields_name_the_file_and_field(work, sidecar, pattern):
    (work / "tiny.preprocess.json").write_text(sidecar)
    line = refused(cli(explain("cat.png", "--out", "out")), 1, pattern)
    assert "tiny.preprocess.json" in line
    assert leftovers(work / "out") == []


def test_toml_sidecar_with_nan(work):
    (work / "p.toml").write_text("[preprocessing]\nstd = nan\n")
    refused(cli(explain("cat.png", "--preprocess", "p.toml", "--out", "out")), 1, "p.toml: std must be a finite number")


def test_gauss_legendre_steps_are_capped(work):
    """numpy's Gauss-Legendre nodes cost steps^2 memory: a million steps used to end in MemoryError."""
    result = cli(explain("cat.png", "--method", "integrated_gradients", "--steps", "1000000", "--out", "out"))
    refused(result, 1, "Gauss-Legendre integration takes at most 1024 steps, not 1000000", "--tolerance")
    assert leftovers(work / "out") == []


def test_nan_weights_fail_naming_the_image_and_the_weights(work):
    tiny_model(work / "nan.onnx", nan=True)
    result = cli(["explain", "cat.png", "--model", "nan.onnx", "--method", "saliency", "--out", "out", "-q"])
    refused(result, 1, "output 'y' is NaN for cat.png", "'fc'")
    assert leftovers(work / "out") == []


def test_python_api_rejects_non_finite_preprocessing():
    from onnxsal.errors import InputError
    from onnxsal.preprocess import Preprocessing

    with pytest.raises(InputError, match="std must be a finite number"):
        Preprocessing(std=(0.2, float("nan"), 0.2))
    with pytest.raises(InputError, match="size must be a whole number"):
        Preprocessing.from_dict({"size": 22.5})


# -- 2. real reasons instead of "internal error" --------------------------------------------------------

def test_out_under_a_file(work):
    (work / "afile").write_text("x")
    refused(cli(explain("cat.png", "--out", "afile/sub")), 1, "cannot create folder afile/sub", "a file is in the way")
    assert (work / "afile").read_text() == "x"


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "no space left on device"), (errno.EACCES, "permission denied"),
                                        (errno.EDQUOT, "disk quota exceeded")])
def test_failed_writes_name_the_real_path(work, monkeypatch, code, words):
    """A write that fails midway (simulated: a full disk, no permission) names the output, not the temporary."""
    from onnxsal import files

    real = os.fdopen

    class Failing:
        def __init__(self, fd, mode):
            self.f = real(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:100])  # half a file, then the disk is full
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "fdopen", Failing)
    line = refused(cli(explain("cat.png", "--out", "out")), 1, f"cannot write out{os.sep}cat_saliency.png: {words}")
    assert ".tmp" not in line
    assert leftovers(work / "out") == []


def test_file_size_limit(work):
    """A real fault: RLIMIT_FSIZE makes the write fail with EFBIG (Python ignores SIGXFSZ)."""
    import resource

    tiny_model(work / "big_input.onnx", size=(256, 256))
    photo(work / "large.png", size=(512, 512))

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    env = {**os.environ, "ONNXSAL_CACHE": "0"}
    proc = subprocess.run([sys.executable, "-m", "onnxsal.cli", "explain", "large.png", "--model", "big_input.onnx",
                           "--method", "saliency", "--out", "out", "-q"], cwd=work, env=env, preexec_fn=limit,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: cannot write out{os.sep}large_saliency.png: file too large for the "
                                                "file-size limit (ulimit -f)"]
    assert leftovers(work / "out") == []


def test_output_name_taken_by_a_folder_with_overwrite(work):
    (work / "out" / "cat_saliency.png").mkdir(parents=True)
    refused(cli(explain("cat.png", "--out", "out", "--overwrite")), 1, "cat_saliency.png: a folder has that name")
    assert temporaries(work / "out") == []
    # without --overwrite the folder is left alone and the picture gets the next free name
    result = cli(explain("cat.png", "--out", "out"))
    assert result.exit_code == 0, result.output
    assert (work / "out" / "cat-2_saliency.png").is_file()


def test_decompression_bomb(work):
    png_header_only(work / "bomb.png", 50_000, 50_000)
    refused(cli(explain("bomb.png", "--out", "out")), 1, "bomb.png: ", "2500000000 pixels", "exceeds limit")
    assert leftovers(work / "out") == []


def test_memory_error_is_one_line(work, monkeypatch):
    from onnxsal.preprocess import Preprocessing

    def exhausted(self, images):
        raise MemoryError()

    monkeypatch.setattr(Preprocessing, "batch", exhausted)
    refused(cli(explain("cat.png", "--out", "out")), 1, "out of memory")
    assert leftovers(work / "out") == []


# -- 3. memory budget -----------------------------------------------------------------------------------

def test_huge_declared_input_is_refused_before_allocating(work):
    tiny_model(work / "huge.onnx", size=(16000, 16000))
    result = cli(explain("cat.png", "--model", "huge.onnx", "--out", "out"), env={"ONNXSAL_MEMORY_BUDGET": "2G"})
    refused(result, 1, "Nx3x16000x16000", "over the memory budget of 2.0 GiB",
            "ONNXSAL_MEMORY_BUDGET")
    assert leftovers(work / "out") == []


def test_rebatching_probe_is_skipped_when_it_would_not_fit(work, monkeypatch):
    # the re-batching probe runs the model on random inputs with every tensor kept (batch 2 and two single
    # samples); on a 16000 x 16000 input that held 20 GB before the budget check refused the model
    from onnxsal.graph import canonicalize as canon

    model = onnx.load(tiny_model(work / "m.onnx", size=(64, 64)))  # 64 x 64 x (3 + 4 + 4) floats: 176 KiB at batch 1
    probed = []
    monkeypatch.setattr(canon, "_rebatch", lambda m, name: probed.append(name) or m)
    monkeypatch.setenv("ONNXSAL_MEMORY_BUDGET", "512K")  # the probe needs 4 x 176 KiB
    assert canon.rebatch_baked_batch(model, "x", 1) is model and probed == []
    monkeypatch.setenv("ONNXSAL_MEMORY_BUDGET", "1M")
    canon.rebatch_baked_batch(model, "x", 1)
    assert probed == ["x"]


def test_huge_size_on_a_dynamic_model_is_refused(work):
    tiny_model(work / "dyn.onnx", dynamic=True)
    result = cli(explain("cat.png", "--model", "dyn.onnx", "--size", "20000", "--out", "out"),
                 env={"ONNXSAL_MEMORY_BUDGET": "1G"})
    refused(result, 1, "Nx3x20000x20000", "over the memory budget of 1.0 GiB", "smaller --size")


def test_huge_batch_size_is_refused(work):
    tiny_model(work / "m.onnx", size=(224, 224))  # one sample: ~3 x (input + conv + relu) = ~8 MiB
    result = cli(explain("cat.png", "--model", "m.onnx", "--batch-size", "100000", "--out", "out",
                         "--method", "smoothgrad"), env={"ONNXSAL_MEMORY_BUDGET": "4G"})
    refused(result, 1, "a batch of 100000 samples of input Nx3x224x224 needs about", "smaller --batch-size")
    assert cli(explain("cat.png", "--model", "m.onnx", "--batch-size", "8", "--out", "out"),
               env={"ONNXSAL_MEMORY_BUDGET": "4G"}).exit_code == 0


def test_image_over_the_budget_is_refused(work):
    png_header_only(work / "wide.png", 20_000, 8_000)  # 160 M pixels: under PIL's bomb limit, over 1 GiB decoded
    result = cli(explain("wide.png", "--out", "out"), env={"ONNXSAL_MEMORY_BUDGET": "1G"})
    refused(result, 1, "wide.png (20000x8000 pixels) needs about", "over the memory budget")


def test_bad_budget_setting(work):
    refused(cli(explain("cat.png", "--out", "out"), env={"ONNXSAL_MEMORY_BUDGET": "lots"}), 1,
            "ONNXSAL_MEMORY_BUDGET must be a size such as 8G")


def test_probe_draws_float32(tmp_path, monkeypatch):
    """The batch probe never makes a float64 copy of a full-size input."""
    from onnxsal import runtime

    calls = []
    real = np.random.default_rng

    class Spy:
        def __init__(self, seed):
            self.rng = real(seed)

        def standard_normal(self, *args, **kwargs):
            calls.append(kwargs.get("dtype"))
            return self.rng.standard_normal(*args, **kwargs)

    from onnxsal.graph import load_model

    graph = load_model(tiny_model(tmp_path / "probe-model.onnx", size=(8, 8)))
    monkeypatch.setenv("ONNXSAL_CACHE_DIR", str(tmp_path / "cache"))  # an empty cache: the probe's answer is not on disk
    monkeypatch.setattr(np.random, "default_rng", Spy)
    runtime.Engine(graph)
    assert calls and all(c is np.float32 for c in calls)


# -- 4. a folder with bad images ------------------------------------------------------------------------

@pytest.fixture()
def folder(work):
    from PIL import Image

    d = work / "photos"
    d.mkdir()
    for name in ("a.png", "c.png", "e.png"):
        photo(d / name)
    (d / "b.png").write_text("this is text, not a picture")
    buffer = d / "d.jpg"
    noise = np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="JPEG")
    buffer.write_bytes(buffer.read_bytes()[:4000])  # truncated: the header reads, the pixels do not
    os.mkfifo(d / "f.png")
    return d


def test_bad_images_are_skipped_with_a_warning_and_a_summary(work, folder):
    result = cli(explain(folder, "--out", "out"))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4, lines
    assert lines[0].startswith("warning: ") and "b.png is not an image file" in lines[0] and lines[0].endswith("; skipped")
    assert lines[1].startswith("warning: ") and "f.png is a pipe, not a regular file" in lines[1]
    assert lines[2].startswith("warning: ") and "d.jpg is a corrupt or truncated image" in lines[2]
    assert lines[3] == "error: 3 of 6 images skipped (named in the warnings above); the others were explained"
    assert leftovers(work / "out") == ["a_saliency.png", "c_saliency.png", "e_saliency.png"]


def test_fail_fast_stops_at_the_first_bad_image(work, folder):
    refused(cli(explain(folder, "--out", "out", "--fail-fast")), 1, "b.png is not an image file")
    assert leftovers(work / "out") == []


def test_a_single_bad_image_is_one_line(work, folder):
    refused(cli(explain(folder / "d.jpg", "--out", "out")), 1, "d.jpg is a corrupt or truncated image")
    assert leftovers(work / "out") == []


def test_only_bad_images(work, folder):
    result = cli(explain(folder / "b.png", folder / "d.jpg", folder / "f.png", "--out", "out"))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["warning", "warning", "warning", "error"]
    assert lines[-1] == "error: none of the 3 images could be read (named in the warnings above)"
    assert leftovers(work / "out") == []


# -- 5. unique output names -----------------------------------------------------------------------------

def test_same_stems_from_different_folders_never_overwrite(work):
    for sub, name in (("a", "cat.png"), ("b", "cat.png"), ("c", "cat-2.png")):
        (work / sub).mkdir()
        photo(work / sub / name)
    result = cli(explain("a/cat.png", "b/cat.png", "c/cat-2.png", "--out", "out"))
    assert result.exit_code == 0, result.output
    assert leftovers(work / "out") == ["cat-2-2_saliency.png", "cat-2_saliency.png", "cat_saliency.png"]


def test_earlier_outputs_are_kept_unless_overwrite(work):
    assert cli(explain("cat.png", "--out", "out")).exit_code == 0
    first = (work / "out" / "cat_saliency.png").read_bytes()
    assert cli(explain("cat.png", "--out", "out", "--format", "both")).exit_code == 0
    assert leftovers(work / "out") == ["cat-2_saliency.npy", "cat-2_saliency.png", "cat_saliency.png"]
    assert (work / "out" / "cat_saliency.png").read_bytes() == first
    assert cli(explain("cat.png", "--out", "out", "--overwrite")).exit_code == 0
    assert leftovers(work / "out") == ["cat-2_saliency.npy", "cat-2_saliency.png", "cat_saliency.png"]


def test_output_names_unit():
    from onnxsal.files import OutputNames

    names = OutputNames("/nonexistent-folder")
    assert [names.claim(s, ["_m.png"]) for s in ("cat", "cat", "cat-2", "cat")] == ["cat", "cat-2", "cat-2-2", "cat-3"]


# -- 6. signals and stale temporaries -------------------------------------------------------------------

def _slow_run(work, env):
    tiny_model(work / "slow.onnx", size=(64, 64))
    photo(work / "slow.png")
    return subprocess.Popen([sys.executable, "-m", "onnxsal.cli", "explain", "slow.png", "--model", "slow.onnx",
                             "--method", "smoothgrad", "--samples", "1000000", "--batch-size", "1", "--out", "out",
                             "-q"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # minutes


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_during_a_run(work, sig, code, word):
    env = {**os.environ, "ONNXSAL_CACHE_DIR": str(work / "cache")}
    proc = _slow_run(work, env)
    deadline = time.time() + 120
    while not (work / "out").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # the output folder appears when the explaining starts
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [f"error: {word}"]
    assert leftovers(work / "out") == []
    assert temporaries(work / "cache") == []


def test_stale_temporaries_are_removed_at_start_but_live_ones_kept(work):
    cache = work / "cache"
    cache.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [cache / f".abc.onnx.{dead_pid}.x1y2z3.tmp", cache / ".abc.onnx.q9w8e7r6.tmp"]  # killed run; older version
    live = cache / f".def.onnx.{os.getpid()}.k3j4h5.tmp"  # a run still writing (this process)
    for p in stale + [live]:
        p.write_bytes(b"\0" * 1000)
    old = time.time() - 7200
    os.utime(stale[1], (old, old))
    os.utime(stale[0], (time.time() - 60, time.time() - 60))
    os.utime(live, (time.time() - 60, time.time() - 60))
    (work / "out").mkdir()
    mine = work / "out" / f".cat_saliency.png.{dead_pid}.abcdef.tmp"
    theirs = work / "out" / ".notes.txt.12.abcdef.tmp"  # not a name onnxsal writes: left alone
    for p in (mine, theirs):
        p.write_bytes(b"x")
        os.utime(p, (old, old))
    from onnxsal import cache as cache_module

    cache_module._SWEPT.clear()
    cache_module.MEMORY.clear()
    result = cli(explain("cat.png", "--out", "out"), env={"ONNXSAL_CACHE_DIR": str(cache)})
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale) and live.exists()
    assert not mine.exists() and theirs.exists()


# -- 7. cache entries checked ---------------------------------------------------------------------------

def _forget(monkeypatch):
    """Nothing of earlier runs in this process: canonical graphs, augmented graphs and sessions share one store."""
    from onnxsal import cache

    monkeypatch.setattr(cache, "MEMORY", cache.ByteLRU())


def test_cache_entry_of_another_key_is_rebuilt(work, monkeypatch):
    cache = work / "cache"
    env = {"ONNXSAL_CACHE_DIR": str(cache)}
    _forget(monkeypatch)
    assert cli(explain("cat.png", "--out", "out1"), env=env).exit_code == 0
    entries = sorted(cache.glob("*.json"))
    assert len(entries) >= 2
    kinds = {json.loads(p.read_text())["kind"]: p for p in entries}
    forward, gradient = kinds["forward"], kinds["gradient"]
    # the gradient entry's files now hold the forward graph (a valid graph for another key), metadata and all
    for suffix in (".onnx", ".json"):
        gradient.with_suffix(suffix).write_bytes(forward.with_suffix(suffix).read_bytes())
    _forget(monkeypatch)
    result = cli(explain("cat.png", "--out", "out2"), env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(gradient.read_text())["kind"] == "gradient"  # rebuilt in place


def test_cache_entry_without_the_outputs_asked_for_is_rebuilt(work, monkeypatch):
    cache = work / "cache"
    env = {"ONNXSAL_CACHE_DIR": str(cache)}
    _forget(monkeypatch)
    assert cli(explain("cat.png", "--out", "out1"), env=env).exit_code == 0
    meta_path = next(p for p in cache.glob("*.json") if json.loads(p.read_text())["kind"] == "gradient")
    model = onnx.load(meta_path.with_suffix(".onnx"))
    keep = [o for o in model.graph.output if not o.name.endswith("_grad")]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    data = model.SerializeToString()
    meta = json.loads(meta_path.read_text())
    import hashlib

    meta["sha256"] = hashlib.sha256(data).hexdigest()
    meta_path.with_suffix(".onnx").write_bytes(data)
    meta_path.write_text(json.dumps(meta))
    _forget(monkeypatch)
    result = cli(explain("cat.png", "--out", "out2"), env=env)
    assert result.exit_code == 0, result.output


def test_unloadable_cache_entry_is_rebuilt_once(work, monkeypatch):
    """A disk entry onnxruntime refuses is dropped and rebuilt once; a graph built in this run that fails is an error."""
    from onnxsal import runtime
    from onnxsal.errors import OnnxsalError

    cache = work / "cache"
    env = {"ONNXSAL_CACHE_DIR": str(cache)}
    _forget(monkeypatch)
    assert cli(explain("cat.png", "--out", "out0"), env=env).exit_code == 0  # the entries are on disk now
    _forget(monkeypatch)
    real = runtime.make_session
    failures = []

    def flaky(data, providers):
        if not failures:
            failures.append(1)
            raise OnnxsalError("onnxruntime cannot run the model: simulated")
        return real(data, providers)

    monkeypatch.setattr(runtime, "make_session", flaky)
    assert cli(explain("cat.png", "--out", "out"), env=env).exit_code == 0
    assert failures == [1]

    def broken(data, providers):
        raise OnnxsalError("onnxruntime cannot run the model: simulated")

    _forget(monkeypatch)
    monkeypatch.setattr(runtime, "make_session", broken)
    line = refused(cli(explain("cat.png", "--out", "out2"), env=env), 1, "onnxruntime cannot run the model: simulated")
    assert leftovers(work / "out2") == []


def test_run_time_failure_of_a_cached_graph_names_the_cache(work, monkeypatch):
    from onnxsal import runtime

    cache = work / "cache"
    env = {"ONNXSAL_CACHE_DIR": str(cache)}
    _forget(monkeypatch)
    assert cli(explain("cat.png", "--out", "out0"), env=env).exit_code == 0
    _forget(monkeypatch)

    real = runtime._Runner.run

    def run(self, outputs, feeds, into=None):
        if self.cached_in is not None:
            self.session = None  # a graph from the cache that onnxruntime then fails to run
        return real(self, outputs, feeds, into)

    monkeypatch.setattr(runtime._Runner, "run", run)
    refused(cli(explain("cat.png", "--out", "out"), env=env), 1, "onnxruntime failed while running the model",
            f"graph read from the cache in {cache}")
    assert leftovers(work / "out") == []


def test_unusable_cache_folder_only_costs_speed(work, monkeypatch):
    (work / "blocker").write_text("a file where the cache folder should be")
    _forget(monkeypatch)
    result = cli(explain("cat.png", "--out", "out"), env={"ONNXSAL_CACHE_DIR": str(work / "blocker" / "cache")})
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_full_cache_folder_only_costs_speed(work, monkeypatch):
    from onnxsal import cache

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    _forget(monkeypatch)
    monkeypatch.setattr(cache, "atomic_write", full)
    result = cli(explain("cat.png", "--out", "out"), env={"ONNXSAL_CACHE_DIR": str(work / "cache")})
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert leftovers(work / "out") == ["cat_saliency.png"]


def test_concurrent_runs_on_an_empty_cache(work):
    env = {**os.environ, "ONNXSAL_CACHE_DIR": str(work / "cache")}
    procs = [subprocess.Popen([sys.executable, "-m", "onnxsal.cli", *explain("cat.png", "--out", f"out{i}")], cwd=work,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and err == "", err
    assert temporaries(work / "cache") == []
    assert leftovers(work / "out0") == leftovers(work / "out1") == ["cat_saliency.png"]


# -- 8. pipes and odd files -----------------------------------------------------------------------------

@pytest.mark.parametrize("args,pattern", [
    (["explain", "pipe.png", "--model", "tiny.onnx"], "pipe.png is a pipe, not a regular file"),
    (["explain", "cat.png", "--model", "pipe.onnx"], "pipe.onnx is a pipe, not a regular file"),
    (["explain", "cat.png", "--model", "tiny.onnx", "--preprocess", "pipe.json"], "pipe.json is a pipe"),
    (["explain", "cat.png", "--model", "tiny.onnx", "--labels", "pipe.txt"], "pipe.txt is a pipe"),
    (["inspect", "pipe.onnx"], "pipe.onnx is a pipe"),
])
def test_pipes_are_refused_without_blocking(work, args, pattern):
    for name in ("pipe.png", "pipe.onnx", "pipe.json", "pipe.txt"):
        os.mkfifo(work / name)
    env = {**os.environ, "ONNXSAL_CACHE_DIR": str(work / "cache")}
    proc = subprocess.run([sys.executable, "-m", "onnxsal.cli", *args, "--out" if args[0] == "explain" else "--json",
                           *(["out"] if args[0] == "explain" else [])], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)  # a blocked read would hit the timeout
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], lines
    assert leftovers(work / "out") == []


# -- 9. stderr noise ------------------------------------------------------------------------------------

def test_python_warnings_are_one_plain_line(work, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # the 64x48 photo (3072 pixels) now draws PIL's warning
    result = cli(explain("cat.png", "--out", "out"))
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("warning: Image size (3072 pixels) exceeds limit") for line in lines), lines
    assert ".py" not in result.stderr


def test_a_successful_run_keeps_stderr_empty(work):
    """At the file-descriptor level (onnxruntime logs there, past Python): no log lines, no progress label when
    stderr is not a terminal."""
    env = {**os.environ, "ONNXSAL_CACHE_DIR": str(work / "cache")}
    proc = subprocess.run([sys.executable, "-m", "onnxsal.cli", "explain", "cat.png", "--model", "tiny.onnx", "--method",
                           "smoothgrad", "--samples", "20", "--out", "out"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "wrote 1 file(s)" in proc.stdout


def test_onnxruntime_log_is_errors_only(monkeypatch):
    import onnxruntime as ort

    from onnxsal.runtime import session_options

    levels = []
    monkeypatch.setattr(ort, "set_default_logger_severity", levels.append)
    assert session_options().log_severity_level == 3  # each session's log
    assert levels == [3]  # and the process-wide logger, which speaks while sessions are built


# -- 10. click's usage errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("args,pattern", [
    (["explain", "cat.png", "--steps", "0"], "invalid value for '--steps': 0 is not in the range x>=1"),
    (["explain", "cat.png", "--stride", "0"], "invalid value for '--stride'"),
    (["explain", "cat.png", "--out", "afile"], "invalid value for '--out'"),
    (["explain", "cat.png", "--no-such-flag"], "no such option '--no-such-flag'"),
    (["explain", "cat.png", "--format", "gif"], "invalid value for '--format'"),
    (["inspect", "tiny.onnx", "--size", "0"], "invalid value for '--size'"),
    (["no-such-command"], "no such command 'no-such-command'"),
    (["export", "tiny.onnx"], "missing option '-o'"),
])
def test_usage_errors_are_one_line_with_exit_2(work, args, pattern):
    (work / "afile").write_text("x")
    refused(cli(args), 2, pattern)
    assert not (work / "onnxsal-out").exists()


# -- 11. the zoo's checksum and sidecar names -----------------------------------------------------------

def test_zoo_checksum_is_checked(work, monkeypatch):
    from onnxsal import zoo

    monkeypatch.setitem(zoo.manifest()["models"]["mobilenet_v2"], "sha256", "0" * 64)
    monkeypatch.setattr(zoo, "_VERIFIED", {})
    refused(cli(["explain", "cat.png", "--model", "mobilenet_v2", "--out", "out"]), 1,
            "zoo model mobilenet_v2", "does not match its sha256")
    assert leftovers(work / "out") == []


def test_model_json_is_not_a_sidecar(work):
    (work / "tiny.json").write_text('{"size": "abc", "something": "else"}')  # e.g. a model card
    result = cli(explain("cat.png", "--out", "out"))
    assert result.exit_code == 0, result.output
    assert leftovers(work / "out") == ["cat_saliency.png"]


# -- cases that already held ----------------------------------------------------------------------------

def _external(work, location):
    model = onnx.load(work / "tiny.onnx")
    w = next(t for t in model.graph.initializer if t.name == "w")
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    onnx.save(model, work / "ext.onnx")


@pytest.mark.parametrize("setup,pattern", [
    ("corrupt", "not an ONNX model"),
    ("truncated", "ext.onnx is not an ONNX model"),
    ("outside", "cannot load the external data"),
    ("absolute", "cannot load the external data"),
    ("symlink", "cannot load the external data"),
    ("missing", "cannot load the external data"),
    ("unknown_op", "com.example:Mystery(-1) is not a registered function/op"),
])
def test_bad_models(work, setup, pattern):
    if setup == "corrupt":
        (work / "ext.onnx").write_bytes(b"\x08\x07garbage" * 100)
    elif setup == "truncated":
        data = (work / "tiny.onnx").read_bytes()
        (work / "ext.onnx").write_bytes(data[: len(data) // 2])
    elif setup == "outside":
        (work.parent / "outside.bin").write_bytes(np.ones(108, np.float32).tobytes())
        _external(work, "../outside.bin")
    elif setup == "absolute":
        (work / "w.bin").write_bytes(np.ones(108, np.float32).tobytes())
        _external(work, str(work / "w.bin"))
    elif setup == "symlink":
        (work.parent / "target.bin").write_bytes(np.ones(108, np.float32).tobytes())
        os.symlink(work.parent / "target.bin", work / "w.bin")
        _external(work, "w.bin")
    elif setup == "missing":
        _external(work, "nowhere.bin")
    else:
        tiny_model(work / "ext.onnx", op="Mystery", domain="com.example")
    refused(cli(["explain", "cat.png", "--model", "ext.onnx", "--method", "saliency", "--out", "out", "-q"]), 1, pattern)
    assert leftovers(work / "out") == []


@pytest.mark.parametrize("args,pattern", [
    (["explain", "missing.png"], "image file not found: missing.png"),
    (["explain", "emptydir"], "holds no image files"),
    (["explain", "cat.png", "--method", "magic"], "unknown method 'magic'"),
    (["explain", "cat.png", "--target", "7"], "class index 7 is out of range"),
    (["explain", "cat.png", "--layer", "nope"], 'unknown layer "nope"'),
])
def test_other_bad_input(work, args, pattern):
    (work / "emptydir").mkdir()
    refused(cli([*args, "--model", "tiny.onnx", "--out", "out"]), 1, pattern)
    assert leftovers(work / "out") == []


def test_python_api_rejects_non_finite_method_options(tmp_path):
    from onnxsal import Explainer
    from onnxsal.errors import MethodError

    ex = Explainer(tiny_model(tmp_path / "m.onnx", size=(8, 8)))
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(MethodError, match="option noise_level of smoothgrad must be a finite number"):
        ex.explain(x, "smoothgrad", noise_level=float("nan"))
    with pytest.raises(MethodError, match="option baseline of integrated_gradients"):
        ex.explain(x, "integrated_gradients", baseline=[0.0, float("inf")])


def test_images_per_chunk_follows_the_budget(tmp_path, monkeypatch):
    from onnxsal.graph import load_model
    from onnxsal.safety import images_per_chunk, model_run_bytes

    graph = load_model(tiny_model(tmp_path / "m.onnx", size=(512, 512)))
    per_image = 8 * 4 * 3 * 512 * 512
    monkeypatch.setenv("ONNXSAL_MEMORY_BUDGET", str(model_run_bytes(graph) + 3 * per_image))
    assert images_per_chunk(graph, 16) == 3
    monkeypatch.setenv("ONNXSAL_MEMORY_BUDGET", "64G")
    assert images_per_chunk(graph, 16) == 16


def test_constant_folding_probe_stays_within_the_budget(monkeypatch):
    """Folding shape arithmetic runs the model at batch 3; over the budget it is left undone (the Engine refuses)."""
    import onnxruntime as ort

    from onnxsal.graph import canonicalize

    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus_one"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inits = [helper.make_tensor("zero", TensorProto.INT64, [], [0]), helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
             helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 512, 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sessions = []
    real = ort.InferenceSession

    def spy(*args, **kwargs):
        sessions.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    monkeypatch.setenv("ONNXSAL_MEMORY_BUDGET", "4M")  # one 3x512x512 float32 sample is 3 MiB; the probe needs 3
    canonicalize.fold_constants(model, "x")
    assert sessions == []
    monkeypatch.setenv("ONNXSAL_MEMORY_BUDGET", "1G")
    canonicalize.fold_constants(model, "x")
    assert sessions == [1]


needs_non_root = pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the simulated "
                                    "EACCES case above covers this machine")


@needs_non_root
def test_read_only_output_folder(work):
    (work / "out").mkdir()
    (work / "out").chmod(0o500)
    try:
        refused(cli(explain("cat.png", "--out", "out")), 1, f"cannot write out{os.sep}cat_saliency.png: permission denied")
        assert leftovers(work / "out") == []
    finally:
        (work / "out").chmod(0o700)


@needs_non_root
def test_read_only_cache_folder_only_costs_speed(work, monkeypatch):
    (work / "cache").mkdir()
    (work / "cache").chmod(0o500)
    _forget(monkeypatch)
    try:
        result = cli(explain("cat.png", "--out", "out"), env={"ONNXSAL_CACHE_DIR": str(work / "cache")})
        assert result.exit_code == 0 and result.stderr == "", result.output
    finally:
        (work / "cache").chmod(0o700)


def test_default_budget_follows_a_container_limit(tmp_path, monkeypatch):
    from onnxsal import safety

    limit = tmp_path / "memory.max"
    limit.write_text(str(6 << 30) + "\n")
    monkeypatch.delenv("ONNXSAL_MEMORY_BUDGET", raising=False)
    monkeypatch.setattr(safety, "CGROUP_LIMITS", (str(limit),))
    if (safety.physical_memory() or 0) >= 6 << 30:
        assert safety.memory_budget() == 3 << 30
    limit.write_text("max\n")  # no limit: the machine's memory decides
    assert safety.memory_budget() >= 1 << 30
