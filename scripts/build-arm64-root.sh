#!/usr/bin/env bash
# Build the emulated arm64 (aarch64) device used by lpmr_edge.devices.emulated.
#
# Result: a Debian arm64 root at ${LPMR_EDGE_ARM_ROOT:-$HOME/.cache/lpmr-edge/arm64-root} with
#   /opt/lpmr-venv                  venv with aarch64 wheels of numpy, torch, executorch, openvino
#   /opt/lpmr-edge/qemu-aarch64     static QEMU used to run everything in the root
#   /opt/lpmr-edge/stamp.json       what was installed; written last
# The root is built beside its final place and renamed into it only when complete, so an
# interrupted build never looks finished; a root whose stamp names another recipe is rebuilt.
#
# Speed: everything run in the root is emulated (~10-20x slower), so the root is Debian's
# `essential` variant plus python3 without Recommends, and the wheels are resolved, downloaded
# and unpacked into the root's venv by the host's pip (--platform/--target, natively); the
# smoke test then byte-compiles, under emulation, just the modules the runner imports.
#
# QEMU: Debian 12's QEMU 7.2 gave wrong INT8 results with `-cpu max` and crashed torch (it has
# no /proc/cpuinfo for aarch64 guests, so cpuinfo/XNNPACK cannot describe the CPU). QEMU 10 (the
# static qemu-aarch64 from Debian 13's qemu-user package, unpacked here, not installed) runs
# with the host's /sys and gave bit-exact results. The host's binfmt handler (qemu-user-static)
# is used only by mmdebstrap to run the root's maintainer scripts; everything after that runs
# through the QEMU 10 binary explicitly.
#
# torch: executorch's Python runtime links libtorch, so torch must be importable. Every torch on
# PyPI that is ABI-compatible with executorch 1.5.1 (2.11+) is a CUDA build on aarch64 and needs
# the NVIDIA wheels to load, even on a CPU; the last CPU-only aarch64 build (2.10.0) resolves the
# same symbols but has a different TensorImpl layout (PyObjectSlot changed), so it is not safe.
# Hence torch 2.13.0 with its NVIDIA dependencies (most of the root's size).
#
# Needs root (apt-get, mount, chroot) on a Debian host with apt sources for Debian.
set -euo pipefail

ROOT=${LPMR_EDGE_ARM_ROOT:-$HOME/.cache/lpmr-edge/arm64-root}
SUITE=bookworm       # Python 3.11 like the x86 venv; glibc 2.36 (openvino's aarch64 wheel needs >= 2.35)
QEMU_SUITE=trixie    # QEMU 10.0.x
QEMU_CPU=${LPMR_EDGE_QEMU_CPU:-neoverse-n1}   # Armv8.2 + dotprod + fp16, like Cortex-A76 boards
DEB_PACKAGES=python3,libstdc++6,usr-is-merged   # usr-is-merged: avoids usrmerge, which pulls in perl
# The runners' imports; versions as in the x86 constraints. executorch goes in without its
# dependencies: its Python runtime needs only torch, flatbuffers, ruamel.yaml and tabulate (the
# rest is for exporting, and hydra-core's antlr4 dependency has no wheel).
PIP_PACKAGES=(numpy==2.4.6 torch==2.13.0 openvino==2026.4.1 flatbuffers==25.12.19 ruamel.yaml==0.19.1
    tabulate==0.10.0)
PIP_NO_DEPS=(executorch==1.5.1)
VENV=/opt/lpmr-venv
TOOLS=/opt/lpmr-edge
RECIPE_ID=$(printf '%s\n' "$SUITE" "$QEMU_SUITE" "$DEB_PACKAGES" "${PIP_PACKAGES[*]}" "${PIP_NO_DEPS[*]}" \
    "$VENV" "$TOOLS" | sha256sum | cut -c1-16)

step() { printf '[arm-root %4ds] %s\n' "$SECONDS" "$*"; }
die() { printf 'build-arm64-root: %s\n' "$*" >&2; exit 1; }

is_current() { grep -qs "\"recipe_id\": \"$RECIPE_ID\"" "$1$TOOLS/stamp.json"; }

# Run a command in a root through QEMU 10, in private mount and pid namespaces so that the
# mounts and every process vanish with it (lpmr_edge/devices/emulated.py does the same).
in_root() {
    local root=$1; shift
    env -i PATH="$VENV/bin:/usr/bin:/bin" HOME=/root LANG=C.UTF-8 \
        unshare --mount --pid --fork --kill-child -- /bin/sh -ec '
            r=$1; cpu=$2; shift 2
            mount -t proc proc "$r/proc"
            mount --rbind /sys "$r/sys"
            mount --rbind /dev "$r/dev"
            exec unshare --root="$r" --wd=/ '"$TOOLS"'/qemu-aarch64 -cpu "$cpu" "$@"
        ' in_root "$root" "$QEMU_CPU" "$@"
}

# Refuse to delete a tree that still has something mounted under it.
remove_tree() {
    [ -e "$1" ] || return 0
    if awk -v p="$(realpath "$1")/" 'index($2 "/", p) == 1 { m = 1 } END { exit !m }' /proc/self/mounts; then
        die "$1 has mounts under it; unmount them first"
    fi
    rm -rf --one-file-system "$1"
}

[ "$(id -u)" = 0 ] || die "must run as root (it uses apt-get, mount and chroot)"
[ "$(uname -m)" = x86_64 ] || die "this script builds an emulated root on an x86_64 host"
command -v apt-get >/dev/null || die "needs a Debian host (apt-get)"

if is_current "$ROOT"; then
    step "up to date: $ROOT"
    exit 0
fi

mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock 9
is_current "$ROOT" && { step "up to date: $ROOT (built by another run)"; exit 0; }

PARTIAL=$ROOT.partial
WORK=$(mktemp -d "$ROOT.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if [ -e "$PARTIAL" ]; then
    step "removing an unfinished build"
    remove_tree "$PARTIAL"
fi

step "host packages: mmdebstrap, qemu-user-static, binfmt-support, pip"
if ! command -v mmdebstrap >/dev/null || ! command -v update-binfmts >/dev/null \
    || ! [ -x /usr/bin/qemu-aarch64-static ] || ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        mmdebstrap qemu-user-static binfmt-support arch-test python3-pip >/dev/null
fi
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "binfmt handler qemu-aarch64 is not enabled"

# The Debian mirror the host already uses (its apt sources), for both the root and QEMU.
MIRROR=${LPMR_EDGE_DEBIAN_MIRROR:-$(apt-get indextargets --format '$(REPO_URI)' \
    'Created-By: Packages' 'Label: Debian' 'Component: main' | head -n1)}
[ -n "$MIRROR" ] || die "no Debian mirror in the host's apt sources; set LPMR_EDGE_DEBIAN_MIRROR"

step "QEMU: qemu-user from $QEMU_SUITE (downloaded, unpacked, not installed)"
APT_OPTS=(-o "Dir::Etc::SourceList=$WORK/sources.list" -o "Dir::Etc::SourceParts=$WORK/empty"
    -o "Dir::State::Lists=$WORK/lists" -o "Dir::Cache=$WORK/cache" -o Dir::State::status=/dev/null
    -o Dir::Etc::Preferences=/dev/null -o "Dir::Etc::PreferencesParts=$WORK/empty"
    -o APT::Architectures::=amd64 -o APT::Sandbox::User=root -qq)
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/empty"
echo "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $QEMU_SUITE main" \
    >"$WORK/sources.list"
apt-get "${APT_OPTS[@]}" update
(cd "$WORK" && apt-get "${APT_OPTS[@]}" download qemu-user)
dpkg-deb --fsys-tarfile "$WORK"/qemu-user_*.deb | tar -x -C "$WORK" ./usr/bin/qemu-aarch64
QEMU_VERSION=$("$WORK/usr/bin/qemu-aarch64" --version | head -n1)
[[ $QEMU_VERSION =~ version\ ([0-9]+)\. ]] && [ "${BASH_REMATCH[1]}" -ge 10 ] \
    || die "expected QEMU >= 10 from $QEMU_SUITE, got: $QEMU_VERSION"
step "$QEMU_VERSION"

step "root: mmdebstrap $SUITE arm64 essential + $DEB_PACKAGES (emulated; a few minutes)"
mmdebstrap --arch=arm64 --variant=essential --include="$DEB_PACKAGES" \
    --aptopt='APT::Install-Recommends "false"' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$SUITE" "$PARTIAL" "$MIRROR"

install -D -m 755 "$WORK/usr/bin/qemu-aarch64" "$PARTIAL$TOOLS/qemu-aarch64"
# TLS may be intercepted here: anything in the root that goes online trusts what the host trusts.
install -D -m 644 /etc/ssl/certs/ca-certificates.crt "$PARTIAL/etc/ssl/certs/ca-certificates.crt"
in_root "$PARTIAL" /usr/bin/python3 -m venv --without-pip "$VENV"

step "wheels for aarch64: ${PIP_PACKAGES[*]} ${PIP_NO_DEPS[*]}"
# The host's pip (and its index configuration) resolves for the root's platform. Environment
# markers are still evaluated on the host, hence no `platform_machine` markers may matter: true for
# this set (torch's CUDA dependencies are marked by platform_system only).
PLATFORMS=(--platform manylinux2014_aarch64)
for minor in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${minor}_aarch64"); done
PIP_TARGET_OPTS=(--only-binary=:all: "${PLATFORMS[@]}" --python-version 3.11 --implementation cp --abi cp311)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_REQUIRE_VIRTUALENV=0 PIP_ROOT_USER_ACTION=ignore
python3 -m pip download -q "${PIP_TARGET_OPTS[@]}" -d "$WORK/wheels" "${PIP_PACKAGES[@]}"
python3 -m pip download -q "${PIP_TARGET_OPTS[@]}" --no-deps -d "$WORK/wheels" "${PIP_NO_DEPS[@]}"
step "unpacking $(ls "$WORK/wheels" | wc -l) wheels ($(du -sh "$WORK/wheels" | cut -f1)) into $VENV"
SITE=$PARTIAL$VENV/lib/python3.11/site-packages
python3 -m pip install -q "${PIP_TARGET_OPTS[@]}" --no-deps --no-index --no-compile --target "$SITE" \
    "$WORK"/wheels/*.whl
rm -rf "$SITE/bin"   # console scripts with the host's interpreter in their shebang
rm -rf "$WORK/wheels"

step "smoke test: import the runtimes under QEMU ($QEMU_CPU), byte-compiling them (emulated; minutes)"
in_root "$PARTIAL" "$VENV/bin/python" -c '
import platform, numpy, openvino
from executorch.runtime import Runtime
assert platform.machine() == "aarch64", platform.machine()
assert Runtime.get().backend_registry.is_available("XnnpackBackend"), "no XNNPACK backend"
assert "CPU" in openvino.Core().available_devices, "no OpenVINO CPU device"
print("ok", platform.machine())
' 2>&1 | grep -v -i warning

step "stamp"
in_root "$PARTIAL" "$VENV/bin/python" -c '
import json, sys
from importlib.metadata import distributions
recipe_id, suite, qemu, built = sys.argv[1:]
stamp = {
    "recipe_id": recipe_id,
    "debian_suite": suite,
    "qemu": qemu,
    "python": sys.version.split()[0],
    "packages": dict(sorted((d.metadata["Name"].lower(), d.version) for d in distributions())),
    "built": built,
}
with open("'"$TOOLS"'/stamp.json", "w") as f:
    json.dump(stamp, f, indent=1)
' "$RECIPE_ID" "$SUITE" "$QEMU_VERSION" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
is_current "$PARTIAL" || die "stamp was not written"

if [ -e "$ROOT" ]; then
    step "replacing the old root"
    mv "$ROOT" "$WORK/old-root"
    mv "$PARTIAL" "$ROOT"
    remove_tree "$WORK/old-root"
else
    mv "$PARTIAL" "$ROOT"
fi
step "done: $ROOT ($(du -sh --one-file-system "$ROOT" | cut -f1))"
