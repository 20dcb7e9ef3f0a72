"""Mutation testing of onnxsal modules with mutmut (configuration: pyproject.toml, [tool.mutmut]).

    pip install mutmut
    python mutation/run.py viz preprocess methods.smoothgrad     # one module at a time; names below onnxsal.

For each module: mutmut generates mutants of every function, runs the oracle test selection once to learn
which tests reach which function, then runs only those tests against each mutant. The script prints, per
module, the mutants generated, killed and surviving, and writes each survivor's diff to
mutation/survivors-<module>.txt for review (judge each: equivalent, cosmetic, or a gap in the tests).
Slow (minutes per module on 2 cores) and not part of CI. mutmut works in ./mutants (git-ignored).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATUS = {"🎉": "killed", "🙁": "survived", "⏰": "timeout", "🤔": "suspicious", "🔇": "skipped", "🫥": "no tests"}


def run_module(module: str) -> Counter:
    pattern = f"onnxsal.{module}.*"
    start = time.time()
    run = subprocess.run(["mutmut", "run", pattern], cwd=ROOT, capture_output=True, text=True)
    counts: Counter = Counter()
    survivors = []
    for line in run.stdout.splitlines():
        m = re.match(r"^\s*(\S+)\s+(onnxsal\.\S+)$", line)
        if m and m.group(1) in STATUS and m.group(2).startswith(f"onnxsal.{module}.x"):
            counts[STATUS[m.group(1)]] += 1
            if STATUS[m.group(1)] != "killed":
                survivors.append(m.group(2))
    if run.returncode != 0 and not counts:
        print(run.stdout[-3000:], run.stderr[-3000:], sep="\n")
        raise SystemExit(f"mutmut failed on {module}")
    with open(ROOT / "mutation" / f"survivors-{module}.txt", "w") as out:
        for name in survivors:
            diff = subprocess.run(["mutmut", "show", name], cwd=ROOT, capture_output=True, text=True).stdout
            changed = [d for d in diff.splitlines() if d[:1] in "+-" and d[:3] not in ("+++", "---")]
            out.write(f"{name}\n" + "\n".join(changed) + "\n\n")
    total = sum(counts.values())
    print(f"{module}: {total} mutants, {counts['killed']} killed, {total - counts['killed']} not killed "
          f"({', '.join(f'{k} {v}' for k, v in counts.items() if k != 'killed') or 'none'}); "
          f"{time.time() - start:.0f} s; survivors in mutation/survivors-{module}.txt", flush=True)
    return counts


def main(modules: list[str]) -> None:
    if not shutil.which("mutmut"):
        raise SystemExit("mutmut is not installed: pip install mutmut")
    for module in modules:
        run_module(module)


if __name__ == "__main__":
    main(sys.argv[1:] or ["viz", "preprocess", "methods.base", "methods.gradient", "methods.smoothgrad",
                          "methods.occlusion", "methods.cam", "workflow"])
