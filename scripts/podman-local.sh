#!/usr/bin/env bash
# podman as this project's container test runs it on a machine without a Docker engine:
# runtime runc (crun fails on some cgroup setups), overlay storage under /tmp (kept apart
# from any system image store), and ulimits high enough for pip and the recorder.
# Usage: scripts/podman-local.sh build|run|image ... (any podman command)
# Env: PODMAN_ROOT (default /tmp/recorder-podman).
set -euo pipefail
root="${PODMAN_ROOT:-/tmp/recorder-podman}"
cmd="$1"
shift
global=(--root "$root/storage" --runroot "$root/run" --storage-driver overlay --runtime runc)
case "$cmd" in
  build | run)
    exec podman "${global[@]}" "$cmd" --network=host \
      --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 "$@"
    ;;
  *) exec podman "${global[@]}" "$cmd" "$@" ;;
esac
