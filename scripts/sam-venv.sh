#!/usr/bin/env bash
# Creates (or repairs) .venv-sam in the repo root with a pinned aws-sam-cli.
# aws-sam-cli pins boto3 exactly, so it lives apart from the project's .venv.
# Idempotent: a stamp file holding the pinned version makes re-runs instant.
set -euo pipefail

SAM_CLI_VERSION="1.170.0"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_dir="${repo_root}/.venv-sam"
stamp_file="${venv_dir}/.sam-cli-version"
python_bin="${PYTHON:-python3}"

venv_is_healthy() {
    [[ -x "${venv_dir}/bin/python" ]] \
        && [[ -x "${venv_dir}/bin/sam" ]] \
        && [[ -f "${stamp_file}" ]] \
        && [[ "$(cat "${stamp_file}")" == "${SAM_CLI_VERSION}" ]] \
        && "${venv_dir}/bin/python" -c "import samcli" >/dev/null 2>&1
}

if venv_is_healthy; then
    exit 0
fi

# A venv whose interpreter no longer runs (moved repo, removed Python) cannot be repaired in place.
if [[ -d "${venv_dir}" ]] && ! "${venv_dir}/bin/python" -c "import sys" >/dev/null 2>&1; then
    echo "sam-venv: removing broken ${venv_dir}" >&2
    rm -rf "${venv_dir}"
fi

if [[ ! -d "${venv_dir}" ]]; then
    echo "sam-venv: creating ${venv_dir}" >&2
    "${python_bin}" -m venv "${venv_dir}"
fi

rm -f "${stamp_file}"
"${venv_dir}/bin/python" -m pip install --quiet --upgrade pip
"${venv_dir}/bin/python" -m pip install --quiet "aws-sam-cli==${SAM_CLI_VERSION}"
"${venv_dir}/bin/sam" --version >&2
echo "${SAM_CLI_VERSION}" >"${stamp_file}"
