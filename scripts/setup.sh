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
extras="example,litert,coreai"
[[ $want_dev == 1 ]] && extras="example,litert,coreai,dev"
# llama-cpp-python compiles llama.cpp from source on first install (about 5-9 CPU-minutes), on every
# core; pip caches the built wheel, so later installs are instant.
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
# On Intel CPUs with AMX, -march=native compiles in llama.cpp's AMX matmul, which segfaults on
# Q8_0 weights of small models (edgepack's tiny test models, at the first decode; upstream
# ggml-org/llama.cpp#20824). It is compiled out; AVX-512 and the other native kernels stay.
no_amx=(-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
amx_off=0
if [[ $(uname -m) == x86_64 ]] && echo | "${CC:-cc}" "${no_amx[@]}" -E - >/dev/null 2>&1; then
    export CFLAGS="${CFLAGS:-} ${no_amx[*]}" CXXFLAGS="${CXXFLAGS:-} ${no_amx[*]}"
    amx_off=1
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[${extras}]"
# pip reuses a wheel it built before, even one built with AMX: rebuild llama-cpp-python once if so.
if [[ $amx_off == 1 ]] && .venv/bin/python -c "import llama_cpp, sys
sys.exit('AMX_INT8 = 1' not in llama_cpp.llama_print_system_info().decode())" 2>/dev/null; then
    echo "setup: rebuilding llama-cpp-python without AMX" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt \
        --no-cache-dir --force-reinstall --no-deps llama-cpp-python
fi
# The LiteRT-LM exporter (litert-torch and its closure), pinned, WITHOUT dependency resolution: xdsl 0.28.0
# (under litert-converter) declares typing-extensions<4.13, which contradicts our typing_extensions pin
# although it runs with it. So `pip check` reports xdsl's (and kagglehub's certifi) bound; the file says why.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements/litert-export.txt
# Apple's Core AI converter and reference interpreter, pinned, WITHOUT dependency resolution: coreai-core
# declares ml-dtypes<=0.6.0 against our ml_dtypes 0.7.0 pin, and runs with it (requirements/coreai.txt says more).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements/coreai.txt
.venv/bin/edgepack --version >&2
# wllama, WebLLM and playwright-core at the versions pinned in targets/web/data/web-vendor/, installed
# once into ~/.cache/edgepack/web-vendor/ (npm ci --ignore-scripts); builds copy from there offline.
.venv/bin/python -m targets.web.vendor install >&2
# kotlinc and ktlint at the versions pinned in targets/android/data/android-tools/ (npm ci --ignore-scripts).
.venv/bin/python -m targets.android.kotlin_check install >&2
