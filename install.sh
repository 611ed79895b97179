#!/usr/bin/env bash
# Create .venv and install sbtm_flows with its test tools.
# torch comes first, pinned to the CPU wheel this machine keeps on disk when it has one;
# the project itself only asks for torch>=2.2.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
"$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q "torch>=2.2"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "installed: $(.venv/bin/python -c 'import torch, sbtm_flows; print("torch", torch.__version__, "sbtm_flows", sbtm_flows.__version__)')"
