#!/usr/bin/env bash
# Run the gh-135371 example as /home/user/app.py under Debian sid's Python 3.14 (in
# the provisioned sid root, a stand-in for a container) and print its aiobpf pstree.
set -euo pipefail
cd "$(dirname "$0")/.."
SID_ROOT=${AIOBPF_SID_ROOT:-/var/cache/aiobpf/sid-root}
PY=${AIOBPF_VENV:-.venv}/bin/python
install -D -m 644 tests/reference/app.py "$SID_ROOT/home/user/app.py"
setsid chroot "$SID_ROOT" /usr/bin/python3.14 /home/user/app.py &
pid=$!
trap 'kill -9 -- -$pid 2>/dev/null || kill -9 $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do  # until its 11 tasks are set up (at most ~10 s)
  n=$("$PY" -m aiobpf ps "$pid" --format json 2>/dev/null | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)["tasks"]))' 2>/dev/null || echo 0)
  [ "$n" = 11 ] && break
  sleep 0.2
done
echo "\$ aiobpf pstree $pid   # python3.14 /home/user/app.py in $SID_ROOT"
"$PY" -m aiobpf pstree "$pid"
