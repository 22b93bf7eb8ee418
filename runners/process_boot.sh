#!/usr/bin/env bash
# Executable for a Beam PROCESS environment: boots a Python SDK harness.
# The runner calls it with --id=... --provision_endpoint=...; the Python
# interpreter comes from BEAM_PROCESS_PYTHON (set by
# runners.process_boot.process_environment_config), else python3 on PATH.
set -euo pipefail
exec "${BEAM_PROCESS_PYTHON:-python3}" \
  "$(dirname "${BASH_SOURCE[0]}")/process_boot.py" "$@"
