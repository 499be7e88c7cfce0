#!/usr/bin/env bash
# Set up edgepack in ./.venv on a fresh machine: system tools (apt), then Python packages pinned by
# requirements/constraints.txt. Idempotent: a second run only checks. Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."

want_dev=0
[[ "${1:-}" == "--dev" ]] && want_dev=1

apt_packages=()
command -v cmake >/dev/null || apt_packages+=(cmake)
command -v g++ >/dev/null || apt_packages+=(g++)
# npm installs the pinned browser runtimes the web target copies into bundles (see below); the web
# bundle is verified in headless Chromium (driven by playwright-core), also by the example build.
command -v node >/dev/null || apt_packages+=(nodejs)
command -v npm >/dev/null || apt_packages+=(npm)
command -v chromium >/dev/null || apt_packages+=(chromium)
# systemd-analyze and shellcheck check the generated Raspberry Pi unit and scripts at build time.
command -v systemd-analyze >/dev/null || apt_packages+=(systemd)
command -v shellcheck >/dev/null || apt_packages+=(shellcheck)
# A JDK runs kotlinc and ktlint, which check the generated Android app and the Kotlin bridge.
command -v java >/dev/null || apt_packages+=(openjdk-17-jdk-headless)
if [[ $want_dev == 1 ]]; then
    command -v sha256sum >/dev/null || apt_packages+=(coreutils)
fi
if (( ${#apt_packages[@]} )); then
    echo "setup: installing ${apt_packages[*]} with apt-get" >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: need root for apt-get; run: sudo apt-get install -y ${apt_packages[*]}" >&2
        exit 2
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
# torch first and alone: 2.13.0 has a local CPU wheel; letting a resolver pick torch could pull
# several GB of CUDA packages instead.
.venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt torch==2.13.0
extras="example,litert"
[[ $want_dev == 1 ]] && extras="example,litert,dev"
# llama-cpp-python compiles llama.cpp from source on first install (about 5-9 CPU-minutes), on every
# core; pip caches the built wheel, so later installs are instant.
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
.venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[${extras}]"
# The LiteRT-LM exporter (litert-torch and its closure), pinned, WITHOUT dependency resolution: xdsl 0.28.0
# (under litert-converter) declares typing-extensions<4.13, which contradicts our typing_extensions pin
# although it runs with it. So `pip check` reports xdsl's (and kagglehub's certifi) bound; the file says why.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements/litert-export.txt
.venv/bin/edgepack --version >&2
# wllama, WebLLM and playwright-core at the versions pinned in targets/web/data/web-vendor/, installed
# once into ~/.cache/edgepack/web-vendor/ (npm ci --ignore-scripts); builds copy from there offline.
.venv/bin/python -m targets.web.vendor install >&2
# kotlinc and ktlint at the versions pinned in targets/android/data/android-tools/ (npm ci --ignore-scripts).
.venv/bin/python -m targets.android.kotlin_check install >&2
