#!/usr/bin/env bash
# The reference library circuit-tracer 0.5.0 in its own venv, for the parity tests (tests/test_export.py)
# and the benchmarks. It cannot share tl_clt's environment: it pins transformers<=4.57.3 and
# transformer-lens<3, while tl_clt needs transformer-lens 3 (transformers>=5.9).
# Usage: scripts/make-ctvenv.sh [DIR]   (default: .ctvenv in the repo root, git-ignored; ~6 min on 2 cores)
# Reuses DIR when its python already imports circuit_tracer. Tests find it there, or via TL_CLT_CT_PYTHON.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${1:-$ROOT/.ctvenv}"
say() { echo "[make-ctvenv] $*" >&2; }
if "$DIR/bin/python" -c "import circuit_tracer" 2>/dev/null; then
  say "circuit-tracer venv present: $DIR"
  exit 0
fi
say "creating $DIR"
python3 -m venv "$DIR"
"$DIR/bin/pip" install -q torch==2.13.0
"$DIR/bin/pip" install -q circuit-tracer==0.5.0 "transformer-lens<3" "transformers<=4.57.3"
# transformer-lens 2.x pins numpy<2, with which the newest pyarrow fails to import: a pair that works
"$DIR/bin/pip" install -q "pyarrow==21.*" "datasets<4"
"$DIR/bin/python" -c "import circuit_tracer, transformer_lens, safetensors" >/dev/null
say "done: $DIR"
