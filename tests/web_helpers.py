"""Shared by the Node.js and browser tests: web/node_modules from web/package-lock.json (npm ci), or a skip that
says why (node/npm missing, or the pinned packages cannot be installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[1] / "web"


def require_node_modules(package: str) -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: this check runs {package} and needs Node.js")
    if (WEB / "node_modules" / package / "package.json").exists():
        return
    env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}  # the bundled CPU build; no CUDA add-on download
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=WEB, env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        pytest.skip(f"{package} cannot be installed here (npm ci failed): {done.stderr.strip()[-300:]}")
