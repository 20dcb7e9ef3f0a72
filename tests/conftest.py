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


@pytest.fixture(scope="session")
def ortt_python() -> str:
    path = os.environ.get("ONNXSAL_ORTT_PYTHON")
    if path:
        return path
    python = ORTT_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ORTT_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *ORTT_REQUIREMENTS], check=True)
    os.environ["ONNXSAL_ORTT_PYTHON"] = str(python)
    return str(python)
