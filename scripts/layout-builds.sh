#!/usr/bin/env bash
# The reference builds `make layouts` generates the layout tables from, as
# tools/gen_layouts.py arguments: pyenv builds (with DWARF) for 3.11-3.13.0 when
# present, and Debian sid's release builds (with the debug files of their -dbg
# packages) for 3.13, 3.14 and 3.15.
set -euo pipefail
SID=${AIOBPF_SID_ROOT:-/var/cache/aiobpf/sid-root}
PYENV_ROOT=${PYENV_ROOT:-$(command -v pyenv >/dev/null && pyenv root || true)}
args=(--debug-dir "$SID/usr/lib/debug")
for v in 3.11 3.12 3.13; do
  dir=$(ls -d "$PYENV_ROOT"/versions/$v.* 2>/dev/null | sort -V | head -n 1 || true)
  [ -n "$dir" ] || continue
  tag=${v/./}
  args+=("$v=$dir/lib/libpython$v.so.1.0,$dir/lib/python$v/lib-dynload/_asyncio.cpython-$tag-x86_64-linux-gnu.so")
done
args+=("3.13=$SID/usr/bin/python3.13,$SID/usr/lib/python3.13/lib-dynload/_asyncio.cpython-313-x86_64-linux-gnu.so")
args+=("3.14=$SID/usr/bin/python3.14,$SID/usr/lib/python3.14/lib-dynload/_asyncio.cpython-314-x86_64-linux-gnu.so")
args+=("3.15=$SID/usr/bin/python3.15")
echo "${args[@]}"
