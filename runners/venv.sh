#!/usr/bin/env bash
# Print the path of a virtualenv that has this project's dependencies,
# creating it on first use.
#
# The virtualenv lives outside the clone and is keyed by a hash of setup.py,
# so every clone with the same dependency set reuses one install of torch
# (a multi-gigabyte CUDA build on PyPI). The project itself is installed in
# editable mode on every call, which takes seconds, so the virtualenv always
# runs the clone that called this script.
#
# The run and test commands share one virtualenv with the test extra, so a
# machine holds a single copy of torch.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_root="${BEAM_ONLINE_DL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/beam-online-dl}"
python="${PYTHON:-python3}"

setup_hash="$(sha256sum "$repo_root/setup.py" | cut -c1-16)"
venv="$cache_root/venv-$setup_hash"
ready_marker="$venv/.dependencies-installed"

if [[ ! -f "$ready_marker" ]]; then
  echo "Creating virtualenv $venv (first run only; torch is a large download)" >&2
  rm -rf "$venv"
  mkdir -p "$cache_root"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip setuptools wheel >&2
  "$venv/bin/python" -m pip install --quiet "$repo_root[test]" >&2
  "$venv/bin/python" -m pip uninstall --quiet --yes beam-online-dl >&2
  touch "$ready_marker"
fi

"$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation \
  --editable "$repo_root" >&2
echo "$venv"
