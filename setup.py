"""The compiled part of aiobpf: the collector's hot loops (aiobpf/collector/_speedups.c).

Everything else is in pyproject.toml.  aiobpf runs without it (slower, and `aiobpf
doctor` says so): the same loops are in Python in aiobpf/collector/speedups.py.  The
module records the SHA-256 of the source it was built from, and aiobpf does not load
one built from another source (a stale in-place build).
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "aiobpf/collector/_speedups.c"
DIGEST = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()

setup(ext_modules=[Extension(
    "aiobpf.collector._speedups", [SOURCE],
    define_macros=[("SPEEDUPS_SOURCE", f'"{DIGEST}"')],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=c11"],
)])
