#!/usr/bin/env bash
# Container images for the test node (test/controlplane/node.ts), built locally: there is no
# registry here. Each image is written as an OCI archive into the cache and imported into the
# node's containerd at start. buildah runs with the vfs driver in a private root in the cache.
#
#   pause   the sandbox process (test/controlplane/pause), as localhost/pnc/pause:test
#
# Needs root and buildah (scripts/setup.sh installs it).
set -euo pipefail
cache="${PNC_CACHE_DIR:-$HOME/.cache/pnc-controlplane}"
images="$cache/images"
mkdir -p "$images"
buildah_root="$cache/buildah"
bh() { buildah --root "$buildah_root/root" --runroot "$buildah_root/run" --storage-driver vfs "$@"; }

# image_from_binary <archive name> <image ref> <binary>: a FROM scratch image of one static binary.
image_from_binary() {
  local archive="$images/$1.oci.tar" ref="$2" binary="$3" stamp
  stamp="$(sha256sum "$binary" | cut -c1-16)"
  if [ -f "$archive" ] && [ "$(cat "$archive.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "images: $ref is up to date ($archive)"
    return
  fi
  local start c
  start=$(date +%s)
  c="$(bh from scratch)"
  bh copy "$c" "$binary" "/$(basename "$binary")" >/dev/null
  bh config --entrypoint "[\"/$(basename "$binary")\"]" --user 65535:65535 "$c"
  bh commit -q "$c" "$ref" >/dev/null
  bh rm "$c" >/dev/null
  rm -f "$archive"
  bh push -q "$ref" "oci-archive:$archive:$ref"
  echo "$stamp" >"$archive.stamp"
  echo "images: built $ref in $(( $(date +%s) - start )) s ($(du -h "$archive" | cut -f1))"
}

image_from_binary pause localhost/pnc/pause:test "$cache/bin/pause"
