"""The compiled loops built with AddressSanitizer and UndefinedBehaviorSanitizer, run
through their differential test (``test_speedups.py``): hostile buffers must not make
the C read outside them, overflow, or misalign (gcc is provisioned: a missing compiler
fails this test)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "aiobpf" / "collector" / "_speedups.c"

# Loads the sanitized build in place of the normal one, then runs the test file.
RUNNER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("aiobpf.collector._speedups", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["aiobpf.collector._speedups"] = module
from aiobpf.collector import speedups
assert speedups._C is module, speedups.NOT_COMPILED
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", sys.argv[2]]))
"""


def _runtime(name: str) -> str:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert os.path.isabs(path), f"gcc has no {name} (libasan/libubsan are gcc's)"
    return path


@pytest.mark.fuzz
def test_the_compiled_loops_pass_their_differential_test_under_sanitizers(
        tmp_path: Path) -> None:
    built = tmp_path / "_speedups.so"
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                    f"-DSPEEDUPS_SOURCE=\"{digest}\"", f"-I{sysconfig.get_paths()['include']}",
                    str(SOURCE), "-o", str(built)], check=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "ASAN_OPTIONS": "detect_leaks=0",
           "LD_PRELOAD": f"{_runtime('libasan.so')}:{_runtime('libubsan.so')}"}
    env.pop("AIOBPF_PURE_PYTHON", None)
    run = subprocess.run([sys.executable, "-c", RUNNER, str(built),
                          str(REPO / "tests" / "unit" / "test_speedups.py")],
                         capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]
