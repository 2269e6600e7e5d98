#!/usr/bin/env python3
"""Write the README's metrics table and series cap from aiobpf/exporters/metrics.py.

Each generated part of README.md sits between ``<!-- BEGIN generated: NAME -->`` and
``<!-- END generated: NAME -->``; the rest of the README is left as it is.  With
--check, nothing is written: the exit status is 1 when the README is not what this
tool would write (tests/unit/test_deploy.py runs that).
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiobpf.daemon import service
from aiobpf.daemon.config import Config
from aiobpf.exporters.metrics import (
    ERROR_KINDS,
    FAMILIES,
    OWN_PROCESS_METRICS,
    PROCESS_LABELS,
    SOURCES,
    Family,
    series_cap,
    series_fixed,
)

README = Path(__file__).resolve().parent.parent / "README.md"
WIDTH = 86   # of the paragraphs written (the table's rows are one line each)
TYPES = {"gaugehistogram": "gauge histogram"}


def fill(paragraph: str) -> str:
    return textwrap.fill(paragraph, WIDTH, break_long_words=False, break_on_hyphens=False)


def duration(seconds: float) -> str:
    """``seconds`` in the unit that suits it, to two significant digits."""
    unit, scale = next(((unit, scale) for unit, scale in (("s", 1.0), ("ms", 1e-3))
                        if seconds >= scale), ("µs", 1e-6))
    return f"{seconds / scale:.2g} {unit}"


def buckets(family: Family) -> str:
    if not family.buckets:
        return ""
    if family.type == "histogram":   # powers of two of nanoseconds
        ratio = family.buckets[1] / family.buckets[0]
        return (f"; buckets from {duration(family.buckets[0])} to "
                f"{duration(family.buckets[-1])}, ×{ratio:g} each")
    return "; buckets " + ", ".join(f"{b:g}" for b in family.buckets)


def row(family: Family) -> str:
    name = family.samples[0] if family.type in ("counter", "info") else family.name
    source = SOURCES[family.source]
    if family.windowed:
        source += ", estimated between capture windows"
    what = family.help.removesuffix(".") + (f"; {family.note}" if family.note else "")
    labels = ", ".join(f"`{label}`" for label in family.labels)
    return (f"| `{name}` | {TYPES.get(family.type, family.type)} | {labels} | {source} | "
            f"{what}{buckets(family)} |")


def metrics_table() -> str:
    own = ", ".join(f"`{name}`" for name in OWN_PROCESS_METRICS)
    return "\n".join([
        fill("Per-process series carry " + ", ".join(f"`{label}`" for label in PROCESS_LABELS)
             + " (`container`: the container id from the cgroup, empty on the host); those "
             "\"from\" aiobpf itself carry none of them."),
        "",
        "| metric | type | labels | from | what |",
        "|---|---|---|---|---|",
        *(row(family) for family in FAMILIES),
        f"| {own} | | | aiobpf itself | aiobpf's own CPU, memory and file descriptors "
        "(prometheus_client's process collector) |",
    ])


def series_cap_text() -> str:
    top = Config().top_sites
    return fill(f"**Cardinality cap.** A process exports at most {series_fixed()} + "
            f"`top_sites` + 1 series (its await sites and `(other)`): {series_cap(top)} "
            f"with the default `top_sites = {top}`, whatever its task names and sites "
            "(tested with 100,000 task names and 10,000 await sites).")


def error_kinds() -> str:
    limits = {"read_deadline": f"{service.READ_DEADLINE_S:g} s",
              "dump_deadline": f"{service.DUMP_DEADLINE_S:g} s",
              "max_tasks": f"{service.MAX_TASKS:,}",
              "examine_limit": f"{service.EXAMINE_LIMIT_S:g} s"}
    return fill("Error kinds (`aiobpf_errors_total{kind}`): " + ", ".join(
        f"`{kind}` ({what.format(**limits)})" for kind, what in ERROR_KINDS.items()) + ".")


PARTS = {"metrics table": metrics_table, "series cap": series_cap_text,
         "error kinds": error_kinds}


def generate(readme: str) -> str:
    """``readme`` with every generated part written afresh."""
    for name, make in PARTS.items():
        pattern = re.compile(rf"(<!-- BEGIN generated: {name} -->\n)(?:.*?\n)?(<!-- END "
                             rf"generated: {name} -->)", re.DOTALL)
        if not pattern.search(readme):
            raise SystemExit(f"gen_metrics_doc: README.md has no generated part {name!r}")
        text = make()
        readme = pattern.sub(lambda m, text=text: f"{m[1]}{text}\n{m[2]}", readme)
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when README.md is out of date")
    args = parser.parse_args()
    current = README.read_text(encoding="utf-8")
    fresh = generate(current)
    if args.check:
        if fresh != current:
            print("gen_metrics_doc: README.md is out of date: run tools/gen_metrics_doc.py",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
