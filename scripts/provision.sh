#!/usr/bin/env bash
# Provision a Debian machine for aiobpf: bcc, kernel headers, a venv, the test
# interpreters.  Idempotent: a second run checks and changes nothing.  Each step
# prints one line: "ok:" (already there), "installed:", "created:", "linked:".
#
#   scripts/provision.sh            everything (as root)
#   scripts/provision.sh --no-sid   only what the daemon needs: no test interpreters,
#                                   test tools or container image (a host, the image)
#   --container                     the image: no kernel headers (the host's are mounted),
#                                   nor git, make, pip and bpftool
#   --packages-only                 Debian packages only (the image's first layer)
#
# Environment: AIOBPF_VENV (default .venv in the repository), AIOBPF_SID_ROOT
# (default /var/cache/aiobpf/sid-root), AIOBPF_OLD_ROOT (default
# /var/cache/aiobpf/bullseye-root), AIOBPF_MIRROR (default http://deb.debian.org/debian),
# AIOBPF_SPEEDSCOPE_DIR (default /var/cache/aiobpf/speedscope: speedscope's schema).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${AIOBPF_VENV:-$REPO/.venv}
SID_ROOT=${AIOBPF_SID_ROOT:-/var/cache/aiobpf/sid-root}
OLD_ROOT=${AIOBPF_OLD_ROOT:-/var/cache/aiobpf/bullseye-root}
MIRROR=${AIOBPF_MIRROR:-http://deb.debian.org/debian}
WITH_SID=1
CONTAINER=0
PACKAGES_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --no-sid) WITH_SID=0 ;;
    --container) CONTAINER=1 ;;
    --packages-only) PACKAGES_ONLY=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "provision: unknown option $arg" >&2; exit 2 ;;
  esac
done

say() { echo "provision: $*"; }
die() { echo "provision: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (it installs packages and links kernel headers)"

# -- 1. Debian packages ---------------------------------------------------------
PACKAGES=(python3 python3-venv python3-bpfcc ca-certificates)
# What builds aiobpf's compiled loops (setup.py).  A container gets them in the step that
# builds aiobpf and loses them at its end: one image layer, without a compiler.
BUILD_PACKAGES=(gcc libc6-dev python3-dev)
[ "$CONTAINER" = 0 ] || [ "$PACKAGES_ONLY" = 0 ] && PACKAGES+=("${BUILD_PACKAGES[@]}")
# A shell on the host: the tools the README's commands use.
[ "$CONTAINER" = 0 ] && PACKAGES+=(python3-pip bpftool make git)
# The test interpreters: debootstrap for the sid and bullseye roots; python3.11-dbg
# for the debug file of Debian's python3.11, which the layout tests check against;
# wrk, the load generator of bench/overhead.py; prometheus, the server the daemon's
# tests scrape with (they start their own on loopback; the packaged service is not
# started); podman and runc, which build and run the container image in the tests
# (crun, podman's other runtime, cannot set rlimits in some VMs), with the CNI
# plugins of its default network.
[ "$WITH_SID" = 1 ] && PACKAGES+=(debootstrap python3.11-dbg wrk prometheus
                                  podman runc containernetworking-plugins iptables)
# golang-go: `go tool pprof`, which reads the pprof files of `aiobpf profile` in the tests;
# tmux: the terminal in which the tests run `aiobpf top` and read its screen.
[ "$WITH_SID" = 1 ] && PACKAGES+=(golang-go tmux)
# The other consumers of `aiobpf profile`'s files in the tests: protobuf-compiler
# (protoc --decode) with golang-github-google-pprof-dev, which ships pprof's own
# profile.proto; chromium, which opens the HTML flame graph headless and screenshots it;
# npm, which fetches speedscope's published schema (step 7): Debian's, unless the machine
# has one (NodeSource's nodejs ships its own, and conflicts with Debian's).
[ "$WITH_SID" = 1 ] && PACKAGES+=(protobuf-compiler golang-github-google-pprof-dev chromium)
[ "$WITH_SID" = 1 ] && ! command -v npm >/dev/null && PACKAGES+=(npm)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # Installing must not start services (prometheus would listen on :9090): a
  # policy-rc.d refuses, for the duration of the install only.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
  # An image keeps no downloaded .deb files.
  [ "$CONTAINER" = 1 ] && apt-get clean
  say "installed: ${missing[*]}"
else
  say "ok: packages ${PACKAGES[*]}"
fi

[ "$PACKAGES_ONLY" = 1 ] && exit 0

# -- 2. kernel headers for bcc --------------------------------------------------
KREL=$(uname -r)
MODDIR=/lib/modules/$KREL
if [ "$CONTAINER" = 1 ]; then
  say "ok: no kernel headers (--container: the host's are mounted)"
elif [ -f "$MODDIR/build/Makefile" ]; then
  say "ok: kernel headers at $MODDIR/build"
elif DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "linux-headers-$KREL" >/dev/null 2>&1; then
  say "installed: linux-headers-$KREL"
else
  # A kernel without a headers package (a cloud or VM kernel): bcc compiles its
  # programs against Debian's generic headers just as well.
  dpkg-query -W -f='${Status}' linux-headers-amd64 2>/dev/null | grep -q "install ok installed" || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-headers-amd64 >/dev/null
    say "installed: linux-headers-amd64 (no headers package exists for kernel $KREL)"
  }
  build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
  [ -n "$build" ] && [ -n "$common" ] || die "no /usr/src/linux-headers-*-amd64 after installing linux-headers-amd64"
  mkdir -p "$MODDIR"
  ln -sfn "$build" "$MODDIR/build"
  ln -sfn "$common" "$MODDIR/source"
  say "linked: $MODDIR/build -> $build and source -> $common (fallback for a kernel without a headers package)"
fi

# -- 3. the venv ------------------------------------------------------------------
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import bcc" 2>/dev/null; then
  say "ok: venv $VENV sees bcc"
else
  rm -rf "$VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
  say "created: venv $VENV (with system site packages: bcc comes from python3-bpfcc, not PyPI)"
fi
# The test tools (pytest, linters) with the test interpreters only.
EXTRAS="" TEST_MODULES=""
[ "$WITH_SID" = 1 ] && EXTRAS="[test]" TEST_MODULES=", pytest, hypothesis, jsonschema, kubernetes_validate"
if "$VENV/bin/python" -c "import aiobpf, elftools, prometheus_client, psutil, yaml, bcrypt$TEST_MODULES" 2>/dev/null \
   && [ "$("$VENV/bin/python" -c 'import aiobpf, pathlib; print(pathlib.Path(aiobpf.__file__).resolve().parent.parent)')" = "$REPO" ]; then
  say "ok: aiobpf and its dependencies in the venv"
else
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO$EXTRAS"
  say "installed: aiobpf (editable) and its dependencies into the venv"
fi
# The compiled loops, built in place (again after a change to their source; an editable
# install does not rebuild them).  aiobpf refuses a module built from another source.
"$VENV/bin/python" setup.py -q build_ext --inplace >/dev/null 2>"$VENV/build_ext.log" \
  || { cat "$VENV/build_ext.log" >&2; die "building aiobpf's compiled loops (setup.py build_ext) failed"; }
"$VENV/bin/python" -c 'from aiobpf.collector import speedups as s; assert s.COMPILED, s.NOT_COMPILED' \
  || die "aiobpf's compiled loops do not load (above)"
say "ok: aiobpf's compiled loops (aiobpf/collector/_speedups.c) are built"
if [ "$CONTAINER" = 1 ]; then
  # The image keeps the built module, not the compiler.
  # Nothing was installed for its Recommends or Suggests (--no-install-recommends), so
  # what those alone keep (binutils, which python3.11 suggests) came with the compiler.
  DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq --auto-remove \
    -o APT::AutoRemove::RecommendsImportant=false -o APT::AutoRemove::SuggestsImportant=false \
    "${BUILD_PACKAGES[@]}" >/dev/null
  apt-get clean
  rm -rf /var/lib/apt/lists/*
  say "removed: what the build needed (${BUILD_PACKAGES[*]})"
fi
"$VENV/bin/python" -c "import bcc, elftools, prometheus_client, yaml, bcrypt$TEST_MODULES" \
  || die "the venv cannot import bcc, pyelftools, prometheus_client, yaml, bcrypt$TEST_MODULES"

# -- 4. test interpreters ---------------------------------------------------------
/usr/bin/python3.11 -c 'import sys' 2>/dev/null || die "Debian's /usr/bin/python3.11 does not run"
say "ok: debian-3.11 $(/usr/bin/python3.11 -c 'import platform; print(platform.python_version())')"

# A debootstrapped root: built next to its final place and moved there only when
# complete, so an interrupted run never leaves a half-made root that looks ready.
make_root() {  # make_root DIR SUITE PACKAGES
  local dir=$1 suite=$2 packages=$3
  local marker="$dir/.aiobpf-ready"
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "$suite $packages" ]; then
    say "ok: $suite root $dir"
    return
  fi
  local tmp="$dir.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$(dirname "$dir")"
  debootstrap --variant=minbase --include="$packages" "$suite" "$tmp" "$MIRROR" >"$tmp.log" 2>&1 \
    || { tail -n 5 "$tmp.log" >&2; rm -rf "$tmp"; die "debootstrap $suite failed (log above)"; }
  rm -f "$tmp.log"
  mkdir -p "$tmp/home/user"
  echo "$suite $packages" >"$tmp/.aiobpf-ready"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  say "created: $suite root $dir with $packages"
}

# Packages added to a made root with its own apt (debootstrap wrote its sources), apart
# from make_root's list so that adding one never rebuilds the root.  Marked done in
# the root (a rebuilt root gets them again); ``check`` is a command run in the root
# that says whether they work.
add_to_root() {  # add_to_root DIR CHECK PACKAGE...
  local dir=$1 check=$2
  shift 2
  local marker="$dir/.aiobpf-extras" log="$dir.extras.log"
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "$*" ] && chroot "$dir" sh -c "$check" >/dev/null 2>&1; then
    say "ok: $* in $dir"
    return
  fi
  [ -s "$dir/etc/apt/sources.list" ] || compgen -G "$dir/etc/apt/sources.list.d/*" >/dev/null \
    || die "$dir has no apt sources (etc/apt/sources.list): remove it, provisioning makes it again"
  local policy="$dir/usr/sbin/policy-rc.d" own_policy=0
  if [ ! -e "$policy" ]; then   # no service starts in the root
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
  fi
  local install=(chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q
                 --no-install-recommends "$@")
  # The lists debootstrap fetched first; fresh ones when those are out of date.
  "${install[@]}" >"$log" 2>&1 \
    || { chroot "$dir" apt-get update -q >>"$log" 2>&1 && "${install[@]}" >>"$log" 2>&1; } \
    || { [ "$own_policy" = 1 ] && rm -f "$policy"; tail -n 5 "$log" >&2; die "apt-get install $* in $dir failed (log above)"; }
  if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
  chroot "$dir" sh -c "$check" >>"$log" 2>&1 \
    || { tail -n 5 "$log" >&2; die "installed $* in $dir, but they do not work: $check"; }
  rm -f "$log"
  echo "$*" >"$marker"
  say "installed: $* in $dir"
}

if [ "$WITH_SID" = 1 ]; then
  make_root "$SID_ROOT" sid python3.13,python3.14,python3.15,python3.13-dbg,python3.14-dbg,python3.15-dbg
  # Real third-party servers and clients for the targets (aiohttp, with and without
  # uvloop; httpx): Debian's packages.  Debian builds aiohttp's C parts and uvloop for
  # 3.14 and 3.15 only; under 3.13 aiohttp runs its pure-Python fallbacks.
  add_to_root "$SID_ROOT" \
    "/usr/bin/python3.14 -c 'import aiohttp, uvloop, httpx, typing_extensions' && /usr/bin/python3.13 -c 'import aiohttp, httpx'" \
    python3-aiohttp python3-uvloop python3-httpx python3-typing-extensions
  for exe in python3.13 python3.14 python3.15 python3.14d python3.15d; do
    version=$(chroot "$SID_ROOT" "/usr/bin/$exe" -c 'import platform; print(platform.python_version())') \
      || die "$exe does not run in $SID_ROOT"
    say "ok: sid-${exe#python} $version"
  done
  versions=$(chroot "$SID_ROOT" /usr/bin/python3.14 -c 'import aiohttp, uvloop, httpx
print(*(f"{m.__name__} {m.__version__}" for m in (aiohttp, uvloop, httpx)), sep=", ")') \
    || die "python3.14 in $SID_ROOT cannot import aiohttp, uvloop and httpx"
  say "ok: sid-3.14 with $versions"
  # Python 3.9, which aiobpf must refuse by name.
  make_root "$OLD_ROOT" bullseye python3.9
  chroot "$OLD_ROOT" /usr/bin/python3.9 -c 'import sys' || die "python3.9 does not run in $OLD_ROOT"
fi

# -- 5. optional interpreters -------------------------------------------------------
PYENV_ROOT=${PYENV_ROOT:-$(command -v pyenv >/dev/null && pyenv root || true)}
if [ -n "${PYENV_ROOT:-}" ] && [ -d "$PYENV_ROOT/versions" ]; then
  found=$(cd "$PYENV_ROOT/versions" && ls -d 3.1[1-5].* 2>/dev/null | tr '\n' ' ' || true)
  say "ok: pyenv builds used by the tests: ${found:-none}"
else
  say "ok: no pyenv on this machine (its builds are optional)"
fi

[ "$WITH_SID" = 1 ] || exit 0

# -- 6. the container image's base --------------------------------------------------
# debian:bookworm-slim for tests/integration/test_image.py and `make image`, made
# locally (no registry needed) and cached; the image itself is built by the test.
bash scripts/image.sh base

# -- 7. speedscope's file format schema ----------------------------------------------
# The JSON schema speedscope publishes in its npm package (dist/release/), which the
# tests validate `aiobpf profile`'s speedscope files against: fetched once with
# `npm pack` (a pinned version), cached, never copied into the repository.
SPEEDSCOPE=1.25.0
SCHEMA_DIR=${AIOBPF_SPEEDSCOPE_DIR:-/var/cache/aiobpf/speedscope}
SCHEMA=$SCHEMA_DIR/file-format-schema.json
if [ "$(cat "$SCHEMA_DIR/.version" 2>/dev/null)" = "$SPEEDSCOPE" ] \
   && python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$SCHEMA" 2>/dev/null; then
  say "ok: speedscope $SPEEDSCOPE's schema $SCHEMA"
else
  command -v npm >/dev/null || die "npm is missing: it fetches speedscope's schema (the npm package)"
  tmp=$(mktemp -d)
  member=package/dist/release/file-format-schema.json
  (cd "$tmp" && npm pack --loglevel=error --cache "$tmp/npm-cache" "speedscope@$SPEEDSCOPE") >"$tmp/log" 2>&1 \
    && tar -xzf "$tmp/speedscope-$SPEEDSCOPE.tgz" -C "$tmp" "$member" 2>>"$tmp/log" \
    && python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$tmp/$member" 2>>"$tmp/log" \
    || { tail -n 5 "$tmp/log" >&2; rm -rf "$tmp"; die "could not fetch $member of speedscope@$SPEEDSCOPE with npm pack (log above; is the npm registry reachable?)"; }
  mkdir -p "$SCHEMA_DIR"
  mv "$tmp/$member" "$SCHEMA"
  echo "$SPEEDSCOPE" >"$SCHEMA_DIR/.version"
  rm -rf "$tmp"
  say "installed: speedscope $SPEEDSCOPE's schema $SCHEMA (npm pack)"
fi

# -- 8. the matrix ------------------------------------------------------------------
AIOBPF_SID_ROOT=$SID_ROOT AIOBPF_OLD_ROOT=$OLD_ROOT "$VENV/bin/python" - <<'PY'
from tests.pythons import all_pythons
print("provision: interpreter matrix")
for python in all_pythons():
    state = "present" if python.available() else ("MISSING" if python.required else "absent")
    kind = "required" if python.required else "optional"
    print(f"  {python.label:<16} {kind:<9} {state:<8} {python.host_executable}")
PY
