#!/usr/bin/env bash
# Build the CPU image and check that it works as deployed: the container runs with a read-only
# root filesystem and a tmpfs on /tmp, /healthz answers (and the image's HEALTHCHECK passes), a
# real scoring request with two small NIfTI volumes returns the Dice and Jaccard worked out
# below by hand, the service runs as a non-root user, and SIGTERM stops it with exit code 0.
#
#   bash docker/smoke-test.sh
#
# The engine is docker when its daemon answers, otherwise podman (ENGINE=docker|podman forces
# one). Environment, all optional:
#   IMAGE            tag to build and test (default localhost/monai-jdt:smoke)
#   SKIP_BUILD=1     test an existing IMAGE without building it
#   BASE_IMAGE       base image build argument (default: the Dockerfile's)
#   MAKE_BASE=1      podman only: when BASE_IMAGE is missing, make it with make-local-base.sh
#                    (debootstrap; needs root) instead of failing
#   TORCH_SPEC, TORCH_INDEX_URL   passed on as build arguments when set (even empty)
#   WHEELS_DIR       podman only: a host directory of wheels, mounted into the build and
#                    passed as FIND_LINKS (e.g. a local CPU torch wheel)
#   CA_BUNDLE        podman only: host CA bundle mounted over the build's system bundle and
#                    given to pip (default /etc/ssl/certs/ca-certificates.crt when it exists)
#   PORT             host port to publish on 127.0.0.1 (default 18000)
#   PYTHON           host Python with numpy and nibabel (default .venv/bin/python, else python3)
#
# On a machine without registry access (the project's CI machines), for example:
#   MAKE_BASE=1 WHEELS_DIR=/opt/wheels TORCH_SPEC=torch==2.13.0+cpu \
#     TORCH_INDEX_URL= bash docker/smoke-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

image=${IMAGE:-localhost/monai-jdt:smoke}
port=${PORT:-18000}
api_key=smoke-test-key
name=jdt-smoke-$$
work=$(mktemp -d)
started=$SECONDS

say() { printf '== [%4ss] %s\n' "$((SECONDS - started))" "$*"; }
fail() {
  echo "smoke-test: FAIL: $*" >&2
  if [ -n "${engine:-}" ] && "$engine" inspect "$name" >/dev/null 2>&1; then
    echo "--- container log (last 40 lines)" >&2
    "$engine" logs --tail 40 "$name" >&2 || true
  fi
  exit 1
}
cleanup() {
  if [ -n "${engine:-}" ]; then
    "$engine" rm -f "$name" >/dev/null 2>&1 || true
    "$engine" volume rm -f "$name-data" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# ---- engine ------------------------------------------------------------------------------
if [ -n "${ENGINE:-}" ]; then
  engine=$ENGINE
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  engine=docker
elif command -v podman >/dev/null; then
  engine=podman
else
  fail "no container engine: need docker with a running daemon, or podman"
fi
# Lowered limits: some sandboxes refuse the engine's defaults (runc: "error setting rlimits").
limits=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
say "engine: $engine ($("$engine" --version))"

# ---- host python for the test volumes ----------------------------------------------------
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
"$python" -c "import nibabel, numpy" 2>/dev/null \
  || fail "$python cannot import nibabel and numpy (set PYTHON to one that can)"

# ---- build -------------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  build=("$engine" build -f docker/Dockerfile -t "$image" "${limits[@]}")
  base=${BASE_IMAGE:-$(sed -n 's/^ARG BASE_IMAGE=//p' docker/Dockerfile)}
  [ -n "${BASE_IMAGE:-}" ] && build+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  [ -n "${TORCH_SPEC:-}" ] && build+=(--build-arg "TORCH_SPEC=$TORCH_SPEC")
  [ -n "${TORCH_INDEX_URL+set}" ] && build+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
  if [ "$engine" = podman ]; then
    # docker format keeps HEALTHCHECK (OCI images have no field for it)
    build+=(--format docker)
    if ! podman image exists "$base"; then
      [ "${MAKE_BASE:-0}" = 1 ] \
        || fail "base image $base missing: pull it, or set MAKE_BASE=1 to make it locally"
      say "making the local base image $base"
      # (with no BASE_IMAGE, the script's default: the Dockerfile's base under docker.io/library)
      bash docker/make-local-base.sh ${BASE_IMAGE:+"$BASE_IMAGE"}
    fi
    build+=(--pull=never)
    # vfs copies the whole tree for every layer: commit only each stage's last one there
    if [ "$(podman info --format '{{.Store.GraphDriverName}}')" = vfs ]; then
      build+=(--layers=false)
    fi
    if [ -n "${WHEELS_DIR:-}" ]; then
      [ -d "$WHEELS_DIR" ] || fail "WHEELS_DIR=$WHEELS_DIR is not a directory"
      build+=(-v "$(realpath "$WHEELS_DIR"):/wheels:ro" --build-arg FIND_LINKS=/wheels)
    fi
    ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
    if [ -f "$ca" ]; then
      build+=(-v "$(realpath "$ca"):/etc/ssl/certs/ca-certificates.crt:ro"
        --build-arg PIP_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)
    fi
  elif [ -n "${WHEELS_DIR:-}" ] || [ -n "${CA_BUNDLE:-}" ]; then
    fail "WHEELS_DIR / CA_BUNDLE need podman (docker build cannot mount host paths)"
  fi
  say "building $image"
  "${build[@]}" . >"$work/build.log" 2>&1 || {
    tail -40 "$work/build.log" >&2
    fail "image build failed"
  }
  say "built $image"
fi
size=$("$engine" image inspect --format '{{.Size}}' "$image")
say "image size: $((size / 1000000)) MB"

healthcheck=$("$engine" image inspect --format '{{json .Config.Healthcheck}}' "$image")
case $healthcheck in
  *healthcheck.py*) ;;
  *) fail "image has no HEALTHCHECK (got: $healthcheck)" ;;
esac

# ---- two label volumes with overlaps counted by hand ----------------------------------------
# 16x16x8 voxels, label 0 background.
#   label 1: reference x 0..3, prediction x 2..5 (both y 0..3, z 0..3): 64 voxels each,
#            overlap x 2..3 = 32 voxels -> Dice 2*32/(64+64) = 0.5, Jaccard 32/96 = 1/3
#   label 2: reference x 8..11, prediction x 8..13 (both y 8..11, z 0..1): 32 and 48 voxels,
#            overlap 32 -> Dice 2*32/(32+48) = 0.8, Jaccard 32/48 = 2/3
"$python" - "$work" <<'EOF'
import sys

import nibabel as nib
import numpy as np

out = sys.argv[1]
pred = np.zeros((16, 16, 8), np.uint8)
ref = np.zeros_like(pred)
ref[0:4, 0:4, 0:4] = 1
pred[2:6, 0:4, 0:4] = 1
ref[8:12, 8:12, 0:2] = 2
pred[8:14, 8:12, 0:2] = 2
affine = np.diag([1.5, 1.5, 2.0, 1.0])
nib.save(nib.Nifti1Image(pred, affine), f"{out}/pred.nii.gz")
nib.save(nib.Nifti1Image(ref, affine), f"{out}/ref.nii.gz")
EOF

# ---- run as deployed -----------------------------------------------------------------------
say "starting $name (read-only root, noexec tmpfs /tmp, a volume for the data, no capabilities, an init, 127.0.0.1:$port)"
"$engine" run -d --name "$name" "${limits[@]}" \
  --read-only --tmpfs /tmp:rw,size=256m,mode=1777,noexec,nosuid,nodev \
  -v "$name-data:/var/lib/monai-jdt" \
  --cap-drop ALL --security-opt no-new-privileges --init --pids-limit 256 \
  -p "127.0.0.1:$port:8000" -e JDT_API_KEYS="$api_key" -e JDT_DEVICE=cpu \
  "$image" >/dev/null 2>"$work/run.err" || { cat "$work/run.err" >&2; fail "container did not start"; }

for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$port/healthz" >"$work/health.json" 2>/dev/null; then break; fi
  [ "$("$engine" inspect --format '{{.State.Running}}' "$name")" = true ] \
    || fail "container exited before answering /healthz"
  sleep 1
done
grep -q '"ok"' "$work/health.json" 2>/dev/null || fail "/healthz never answered ok"
say "/healthz: $(cat "$work/health.json")"

"$engine" exec "$name" python3 /opt/jdt/healthcheck.py || fail "the HEALTHCHECK command failed"
if [ "$engine" = podman ]; then
  # (without systemd podman cannot schedule the checks itself: run one by hand)
  podman healthcheck run "$name" || fail "podman healthcheck run failed"
fi
say "HEALTHCHECK passes"

uid=$("$engine" exec "$name" id -u)
[ "$uid" != 0 ] || fail "the service runs as root"
say "runs as uid $uid"

code=$(curl -sS -o /dev/null -w '%{http_code}' -F prediction=@"$work/pred.nii.gz" \
  -F reference=@"$work/ref.nii.gz" "http://127.0.0.1:$port/v1/scores")
[ "$code" = 401 ] || fail "scoring without the API key answered $code, expected 401"

curl -fsS -H "Authorization: Bearer $api_key" -F prediction=@"$work/pred.nii.gz" \
  -F reference=@"$work/ref.nii.gz" "http://127.0.0.1:$port/v1/scores" >"$work/report.json" \
  || fail "POST /v1/scores failed"
"$python" - "$work/report.json" <<'EOF' || fail "wrong scores in the report"
import json
import math
import sys

report = json.load(open(sys.argv[1]))
rows = {row["label"]: row for row in report["labels"]}
expected = {1: (0.5, 1 / 3), 2: (0.8, 2 / 3)}
for label, (dice, jaccard) in expected.items():
    row = rows.get(label)
    assert row is not None, f"label {label} missing from {sorted(rows)}"
    got = (row["dice"], row["jaccard"])
    assert math.isclose(got[0], dice, abs_tol=1e-6), f"label {label}: dice {got[0]} != {dice}"
    assert math.isclose(got[1], jaccard, abs_tol=1e-6), f"label {label}: jaccard {got[1]} != {jaccard}"
    print(f"label {label}: dice {got[0]:.6f} jaccard {got[1]:.6f} (expected {dice:.6f} {jaccard:.6f})")
EOF
say "POST /v1/scores returns the expected Dice and Jaccard"

# ---- clean stop ----------------------------------------------------------------------------
stop_started=$SECONDS
"$engine" stop -t 30 "$name" >/dev/null 2>"$work/stop.err" || { cat "$work/stop.err" >&2; fail "stop failed"; }
exit_code=$("$engine" inspect --format '{{.State.ExitCode}}' "$name")
[ "$exit_code" = 0 ] || fail "exit code $exit_code after SIGTERM, expected 0"
say "SIGTERM: exit code 0 after $((SECONDS - stop_started)) s"
say "PASS ($engine, $image)"
