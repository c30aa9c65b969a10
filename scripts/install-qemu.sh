#!/usr/bin/env bash
# Install the QEMU system emulators and cross binutils that the QEMU tests need.
#
# Idempotent: exits 0 at once when everything is present. As root with apt-get,
# installs the Debian packages (and fails if that fails). Otherwise prints the
# command to run as root and exits 0; the test suite then skips QEMU tests
# loudly (and fails them when CI is set).
set -euo pipefail

REQUIRED=(qemu-system-x86_64 qemu-system-aarch64 qemu-system-arm qemu-system-ppc aarch64-linux-gnu-as)
PACKAGES=(qemu-system-x86 qemu-system-arm qemu-system-ppc binutils-aarch64-linux-gnu binutils)

missing() {
    local tool out=()
    for tool in "${REQUIRED[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || out+=("$tool")
    done
    echo "${out[*]}"
}

todo="$(missing)"
[ -z "$todo" ] && exit 0

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${PACKAGES[*]}"

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    {
        echo "################################################################"
        echo "install-qemu: MISSING: $todo"
        echo "install-qemu: QEMU tests will be SKIPPED (and FAIL when CI is set)."
        if command -v apt-get >/dev/null 2>&1; then
            echo "install-qemu: run as root:"
            echo "    sudo sh -c '$cmd'"
            echo "install-qemu: or: sudo scripts/install-qemu.sh"
        else
            echo "install-qemu: no apt-get here; install the equivalents of: ${PACKAGES[*]}"
        fi
        echo "################################################################"
    } >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run instead of failing on its lock.
APT=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
echo "install-qemu: missing: $todo"
echo "install-qemu: apt-get update"
"${APT[@]}" update
echo "install-qemu: apt-get install ${PACKAGES[*]}"
"${APT[@]}" install -y --no-install-recommends "${PACKAGES[@]}"

todo="$(missing)"
if [ -n "$todo" ]; then
    echo "install-qemu: ERROR: still missing after install: $todo" >&2
    exit 1
fi
echo "install-qemu: done"
