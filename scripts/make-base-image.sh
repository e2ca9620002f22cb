#!/usr/bin/env bash
# Makes the Dockerfile's base image (debian:bookworm-slim) locally, because no container
# registry is reachable here: a minimal bookworm from Debian's own mirror, imported into
# podman and tagged with the name the Dockerfile's FROM lines use.
#
# The host's extra CA certificates go into the image so that apt and pip inside a build
# trust whatever TLS the host trusts (an intercepting proxy's CA, a private mirror's).
#
# Usage: scripts/make-base-image.sh [TAG]   (default debian:bookworm-slim)
# Env:   MIRROR (default http://deb.debian.org/debian), FORCE=1 to rebuild an existing tag,
#        PODMAN (default podman; the tests use scripts/podman-local.sh).
set -euo pipefail

tag="${1:-debian:bookworm-slim}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
podman="${PODMAN:-podman}"

if [ "${FORCE:-0}" != 1 ] && "$podman" image exists "$tag"; then
  echo "base image $tag already exists (FORCE=1 to rebuild)"
  exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/base-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}

# Host CA certificates: the individual extra ones (kept across update-ca-certificates
# runs in the image) and the host's whole bundle as one more extra file, so a CA that the
# host only has in its bundle survives the image installing ca-certificates itself.
install -d "$rootfs/usr/local/share/ca-certificates/host"
if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
  cp -rL /usr/local/share/ca-certificates/. "$rootfs/usr/local/share/ca-certificates/host/"
fi
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp -L /etc/ssl/certs/ca-certificates.crt \
    "$rootfs/usr/local/share/ca-certificates/host/host-bundle.crt"
  install -d "$rootfs/etc/ssl/certs"
  cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi

# What -slim images leave out: apt lists, caches, docs.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*

tar -C "$rootfs" --numeric-owner -c . |
  "$podman" import \
    --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$tag" >/dev/null
echo "base image $tag: $("$podman" image inspect --format '{{.Size}}' "$tag") bytes"
