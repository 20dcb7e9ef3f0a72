"""Shared fixtures. The onnxruntime-training oracle lives in its own virtual environment (it ships its
own `onnxruntime` module); the first test that needs it creates `.venv-ortt` beside the repository,
or uses $ONNXSAL_ORTT_PYTHON when set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORTT_VENV = ROOT / ".venv-ortt"
ORTT_REQUIREMENTS = ["onnxruntime-training-cpu==1.19.2", "numpy<2.5", "onnx"]


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's graph cache."""
    os.environ.setdefault("ONNXSAL_CACHE_DIR", str(tmp_path_factory.mktemp("onnxsal-cache")))


def _ortt_works(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "from onnxruntime.capi._pybind_state import GradientGraphBuilder"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="session")
def ortt_python() -> str:
    """The oracle's interpreter; the tests that need it skip, with the reason, when it cannot be created
    (no network to PyPI, no onnxruntime-training wheel for this Python)."""
    path = os.environ.get("ONNXSAL_ORTT_PYTHON")
    if path:
        return path
    python = ORTT_VENV / "bin" / "python"
    failure = ""
    if not _ortt_works(python):
        try:
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(ORTT_VENV)], check=True, capture_output=True, text=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", *ORTT_REQUIREMENTS], check=True,
                           capture_output=True, text=True, timeout=900)
        except subprocess.CalledProcessError as exc:
            lines = (exc.stderr or exc.stdout or "").strip().splitlines()
            failure = lines[-1] if lines else f"exit code {exc.returncode}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            failure = str(exc)
        if not _ortt_works(python):
            pytest.skip(f"onnxruntime-training oracle unavailable: could not install {' '.join(ORTT_REQUIREMENTS)} into "
                        f"{ORTT_VENV.name} (offline, or no wheel for Python {sys.version_info.major}.{sys.version_info.minor}?)"
                        f"{': ' + failure if failure else ''}; set ONNXSAL_ORTT_PYTHON to an interpreter that has it")
    os.environ["ONNXSAL_ORTT_PYTHON"] = str(python)
    return str(python)
