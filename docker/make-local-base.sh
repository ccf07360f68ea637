#!/usr/bin/env bash
# Make a stand-in for the Dockerfile's base image on a machine that cannot reach a container
# registry (only Debian's package mirror): debootstrap a minimal Debian bookworm with Python 3.11
# and import it into podman under the base image's name, so `build --pull=never` finds it.
#
#   sudo bash docker/make-local-base.sh                      # tag python:3.11-slim-bookworm
#   sudo bash docker/make-local-base.sh my/base:tag          # any other tag (then pass
#                                                            #   --build-arg BASE_IMAGE=my/base:tag)
#
# Needs root, debootstrap and podman (`apt-get install -y podman buildah debootstrap runc`).
# Environment: DEBIAN_MIRROR (default: the first Debian mirror in this host's apt sources),
# ENGINE (default podman),
# FORCE=1 rebuilds even when the tag already exists. Machines that can pull from Docker Hub never
# need this script: the official python:3.11-slim-bookworm image is what the Dockerfile expects.
#
# Differences from the official image that the Dockerfile tolerates: Python is Debian's
# (/usr/bin/python3, with python3-venv for `python3 -m venv`) instead of /usr/local/bin/python3.
set -euo pipefail

tag=${1:-docker.io/library/python:3.11-slim-bookworm}
mirror=${DEBIAN_MIRROR:-$(grep -hsoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources \
  /etc/apt/sources.list.d/*.list /etc/apt/sources.list | awk '$2 !~ /security/ {print $2; exit}' \
  || true)} # grep says 2 for a glob or file that is not there: no mirror then, said below
if [ -z "$mirror" ]; then
  echo "make-local-base.sh: no Debian mirror in the apt sources; set DEBIAN_MIRROR" >&2
  exit 2
fi
engine=${ENGINE:-podman}

if [ "$(id -u)" -ne 0 ]; then
  echo "make-local-base.sh: debootstrap needs root (run it with sudo)" >&2
  exit 2
fi
for tool in debootstrap "$engine"; do
  command -v "$tool" >/dev/null || {
    echo "make-local-base.sh: '$tool' not found (apt-get install -y debootstrap $engine)" >&2
    exit 2
  }
done
if [ "${FORCE:-0}" != 1 ] && "$engine" image exists "$tag" 2>/dev/null; then
  echo "make-local-base.sh: $tag already exists (FORCE=1 to rebuild)"
  exit 0
fi

rootfs=$(mktemp -d /var/tmp/jdt-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
chmod 755 "$rootfs" # it becomes the image's /: mktemp's 0700 would lock out non-root users

echo "== debootstrap bookworm into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,netbase \
  bookworm "$rootfs" "$mirror"

# What the official slim image leaves out as well: package lists, docs, man pages, apt caches.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
  "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*.log

echo "== import as $tag"
tar --numeric-owner -C "$rootfs" -c . | "$engine" import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --message "local stand-in for $tag: debootstrap bookworm + python3" \
  - "$tag"
"$engine" run --rm --pull=never --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 "$tag" python3 -c 'import sys, venv; print(sys.version)'
