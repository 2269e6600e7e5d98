#!/usr/bin/env bash
# The aiobpf container image, built with podman (docker where podman is missing).
# Each step prints one line, "image: ok: ..." or "image: built: ...".
#
#   scripts/image.sh base     debian:bookworm-slim, made locally when missing
#   scripts/image.sh build    the image; its name is the last line printed
#   scripts/image.sh name     the name the current inputs build (aiobpf:in-<hash>)
#
# No container registry is needed: the base is a debootstrapped bookworm (minbase)
# imported as docker.io/library/debian:bookworm-slim, so the Dockerfile's FROM
# resolves locally, and the build never pulls.  Both are cached under
# AIOBPF_IMAGE_CACHE (default /var/cache/aiobpf/images): the base as a tarball, the
# built image as an archive named by a hash of its inputs (the Dockerfile, the files
# its COPY instructions name, the base image), so a re-run with the same inputs
# loads it instead of building.  The image is also tagged aiobpf:latest; older
# aiobpf:in-* images and archives are removed.
#
# Environment: AIOBPF_IMAGE_CACHE, AIOBPF_MIRROR (default http://deb.debian.org/debian),
# AIOBPF_OCI_RUNTIME (default runc: crun cannot set rlimits in some VMs).
set -euo pipefail

cd "$(dirname "$0")/.."
CACHE=${AIOBPF_IMAGE_CACHE:-/var/cache/aiobpf/images}
MIRROR=${AIOBPF_MIRROR:-http://deb.debian.org/debian}
OCI_RUNTIME=${AIOBPF_OCI_RUNTIME:-runc}
BASE=docker.io/library/debian:bookworm-slim
BASE_TAR=$CACHE/bookworm-minbase.tar
REPO_NAME=localhost/aiobpf
HOST_CA=/etc/ssl/certs/ca-certificates.crt

say() { echo "image: $*" >&2; }
die() { echo "image: FAILED: $*" >&2; exit 1; }

if command -v podman >/dev/null; then
  engine() { podman --runtime "$OCI_RUNTIME" "$@"; }
  exists() { podman image exists "$1"; }
  NO_PULL=(--pull=never)
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  engine() { docker "$@"; }
  exists() { docker image inspect "$1" >/dev/null 2>&1; }
  NO_PULL=()    # docker's FROM uses the local image unless told to pull
else
  die "neither podman nor a running docker (scripts/provision.sh installs podman)"
fi

base() {
  if exists "$BASE"; then
    say "ok: base $BASE"
    return
  fi
  if [ ! -s "$BASE_TAR" ]; then
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    command -v debootstrap >/dev/null || die "debootstrap is missing (scripts/provision.sh)"
    local dir="$CACHE/bookworm.tmp.$$"
    mkdir -p "$CACHE"
    trap 'rm -rf "$dir" "$BASE_TAR.tmp"' EXIT
    debootstrap --variant=minbase bookworm "$dir" "$MIRROR" >"$dir.log" 2>&1 \
      || { tail -n 5 "$dir.log" >&2; rm -f "$dir.log"; die "debootstrap bookworm failed"; }
    rm -f "$dir.log"
    # What debian:bookworm-slim leaves out too: downloaded packages and package lists.
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar -C "$dir" -c . >"$BASE_TAR.tmp"
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    rm -rf "$dir"
    trap - EXIT
    say "built: $BASE_TAR (debootstrap --variant=minbase bookworm)"
  fi
  engine import - "$BASE" <"$BASE_TAR" >/dev/null
  say "ok: base $BASE imported from $BASE_TAR"
}

# The build's inputs: the Dockerfile, .dockerignore, this script and the sources of its COPY
# instructions (files, or directories without __pycache__ and built modules).
inputs() {
  local sources
  sources=$(sed -n 's/^COPY \(.*\) [^ ]*$/\1/p' Dockerfile | tr ' ' '\n' | sort -u)
  # shellcheck disable=SC2086  # one path per word
  find Dockerfile .dockerignore scripts/image.sh $sources -type f ! -path '*/__pycache__/*' ! -name '*.so' \
    -print0 | sort -z
}

name() {
  local digest
  digest=$({ inputs | xargs -0 sha256sum; engine image inspect --format '{{.Id}}' "$BASE"; } \
           | sha256sum | cut -c1-16)
  echo "$REPO_NAME:in-$digest"
}

# A build killed midway (a test's timeout) leaves its working container, the runc
# container of the step it ran (still running) and that one's bundle: removed before
# the next build, unless a build is running now.
leftovers() {
  command -v podman >/dev/null || return 0
  pgrep -f '^podman( .*)? build( |$)' >/dev/null && return 0
  local found=0 c
  for c in $(runc list -q 2>/dev/null | grep '^buildah-' || true); do
    runc kill "$c" KILL 2>/dev/null || true
    runc delete -f "$c" >/dev/null 2>&1 || true
    rm -rf "/var/tmp/${c#buildah-}"
    found=1
  done
  for c in $(podman ps -a --external --format '{{.ID}} {{.Names}}' \
             | awk '/-working-container$/ {print $1}'); do
    podman rm -f "$c" >/dev/null
    found=1
  done
  if [ "$found" = 1 ]; then say "removed: the leftovers of a killed build"; fi
}

build() {
  leftovers
  base
  local image archive started
  image=$(name)
  archive="$CACHE/aiobpf-${image##*:}.tar"
  if exists "$image"; then
    say "ok: $image"
  elif [ -s "$archive" ]; then
    engine load -q -i "$archive" >/dev/null
    say "ok: $image loaded from $archive"
  else
    started=$(date +%s)
    # pip (PyPI over HTTPS) trusts what the host trusts, e.g. a proxy's CA: the
    # Dockerfile's secret pip-ca, mounted for that step only.
    local trust=()
    [ -s "$HOST_CA" ] && trust=(--secret "id=pip-ca,src=$HOST_CA")
    engine build "${NO_PULL[@]}" --force-rm "${trust[@]}" -t "$image" . >&2
    say "built: $image in $(( $(date +%s) - started )) s"
    engine save -o "$archive.tmp" "$image" >/dev/null && mv "$archive.tmp" "$archive"
  fi
  engine tag "$image" "$REPO_NAME:latest"
  # Older builds: their images and archives.
  local old
  for old in $(engine images --format '{{.Repository}}:{{.Tag}}' "$REPO_NAME" | grep ':in-' \
               | grep -vx "$image" || true); do
    engine rmi -f "$old" >/dev/null
  done
  find "$CACHE" -maxdepth 1 -name 'aiobpf-in-*.tar*' ! -name "${archive##*/}" -delete
  say "ok: $image ($(engine image inspect --format '{{.Size}}' "$image" \
       | awk '{printf "%.0f MB", $1 / 1e6}'))"
  echo "$image"
}

case "${1:-}" in
  base) base ;;
  build) build ;;
  name) name ;;
  *) sed -n '2,7p' "$0"; exit 2 ;;
esac
