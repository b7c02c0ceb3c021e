#!/usr/bin/env bash
# Debian packages the test suite needs beyond the base image: `ip` and `tc`
# (iproute2) and `nft` (nftables) for the kernel-shaped network-namespace
# comparison in tests/test_netns_shaping.py, and `chromium` for the dashboard's
# browser test (tests/test_dashboard_browser.py, driven by Playwright against
# /usr/bin/chromium; Playwright's own browser download is never used). Idempotent: installs only what
# is missing, and refreshes the package lists only when it has to install.
set -euo pipefail

packages=(iproute2 nftables chromium dataset-fashion-mnist)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "system-deps: all present (${packages[*]})"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
# Install from the current lists if they can; update them only if that fails.
if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
echo "system-deps: installed ${missing[*]}"
