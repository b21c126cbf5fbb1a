#!/usr/bin/env bash
# tl_clt vs circuit-tracer 0.5.0 on a CUDA device: the real (Qwen3-0.6B) shape, 16 and 64 tokens,
# max_feature_nodes 8192, a GPU-sized batch, float32 (with the graph-equality check) and bfloat16.
# Writes $DATA/gpu-<size>-<dtype>-<tokens>.json (DATA=.bench) and the markdown tables to $TABLES
# (benchmarks/gpu-results.md), each case's table as soon as it is measured
# (time per graph, peak GPU memory, roofline ratio against the device's matmul rate measured in the run).
#
#   benchmarks/gpu.sh                         # on a CUDA machine with internet: makes .venv-gpu and .venv-ct
#   WHEELS=.whl benchmarks/gpu.sh             # no registry there: installs the wheels that
#                                             # benchmarks/gpu-wheels.sh .whl fetched here (PYTHONPATH dirs)
#   OURS_PYTHON=python CT_PYTHON=/x/bin/python benchmarks/gpu.sh      # existing environments, no installs
#   DRY_RUN=1 benchmarks/gpu.sh               # print the commands only
#   ENGINES=ours COMPUTE=bfloat16 PROFILE=1 ...   # one engine; tl_clt's compute_dtype; a torch.profiler table
#   NO_STEER=1 ...                            # without the steering table (benchmarks/mediate.py) at the end
#   DEVICE=cpu SIZE=tiny NODES=64 LENGTHS=8 BATCH=16 DTYPES=float32 OURS_PYTHON=python \
#     CT_PYTHON=/work/main/.ctvenv/bin/python benchmarks/gpu.sh       # the same pipeline on a CPU (smoke test)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-real}
NODES=${NODES:-8192}
LENGTHS=${LENGTHS:-16,64}
BATCH=${BATCH:-256}
DTYPES=${DTYPES:-float32,bfloat16}
REPEATS=${REPEATS:-2}
TABLES=${TABLES:-benchmarks/gpu-results.md}
PY=${PYTHON:-python3}

run() { echo "+ $*" >&2; if [ -z "${DRY_RUN:-}" ]; then "$@"; fi; }

if [ -n "${WHEELS:-}" ] && [ -z "${OURS_PYTHON:-}" ]; then  # offline: one --target dir per engine
  site=${SITE:-/tmp/tl-clt-gpu}
  py=$(command -v "$PY")
  for env in ours ct; do
    run "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site/$env" "$WHEELS"/common/*.whl "$WHEELS/$env"/*.whl
    # a python that puts the engine's packages first (bench.py starts each engine's runner with it)
    printf '#!/bin/sh\nexport PYTHONPATH=%s${PYTHONPATH:+:$PYTHONPATH}\nexec %s "$@"\n' \
      "$site/$env" "$py" >"$site/$env-python"
    chmod +x "$site/$env-python"
  done
  OURS_PYTHON=$site/ours-python
  CT_PYTHON=$site/ct-python
fi
if [ -z "${OURS_PYTHON:-}" ]; then  # tl_clt (TransformerLens 3.9) over the machine's torch
  run "$PY" -m venv --system-site-packages .venv-gpu
  run .venv-gpu/bin/pip install -q -e .
  OURS_PYTHON=.venv-gpu/bin/python
fi
if [ -z "${CT_PYTHON:-}" ]; then  # circuit-tracer pins TransformerLens 2.x and transformers<=4.57.3
  run "$PY" -m venv --system-site-packages .venv-ct
  run .venv-ct/bin/pip install -q circuit-tracer==0.5.0
  CT_PYTHON=.venv-ct/bin/python
fi
if [ "$DEVICE" = cuda ] && [ -z "${DRY_RUN:-}" ]; then
  "$OURS_PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
fi

DATA=${DATA:-.bench}
mkdir -p "$DATA"
[ -n "${DRY_RUN:-}" ] || echo "# GPU benchmark ($SIZE shape, max_feature_nodes $NODES, batch $BATCH; benchmarks/gpu.sh, $(date -u +%F))" >"$TABLES"
for length in ${LENGTHS//,/ }; do  # each case's table is added as soon as it is measured
  for dtype in ${DTYPES//,/ }; do
    json=$DATA/gpu-$SIZE-$dtype-$length${COMPUTE:+-compute-$COMPUTE}.json
    run env PYTHONPATH=. "$OURS_PYTHON" benchmarks/bench.py --sizes "$SIZE" --device "$DEVICE" \
      --data-device "$DEVICE" --root "$DATA" --engines "${ENGINES:-ours,ct}" --sections main,equality \
      --length "$length" --max-feature-nodes "$NODES" --batch-size "$BATCH" --dtype "$dtype" \
      --repeats "$REPEATS" --rounds 1 --rss-limit-gib 1000 --ct-python "$CT_PYTHON" --json "$json" \
      ${COMPUTE:+--compute-dtype "$COMPUTE"} ${PROFILE:+--torch-profile}
    if [ -z "${DRY_RUN:-}" ]; then
      printf '\n## %s tokens, %s\n\n' "$length" "$dtype" >>"$TABLES"
      PYTHONPATH=. "$OURS_PYTHON" benchmarks/bench.py --tables-from "$json" >>"$TABLES"
    fi
  done
done
# many steerings of one prompt (steer_many, mediators) against circuit-tracer's feature_intervention
if [ -z "${NO_STEER:-}" ]; then
  steer=(env PYTHONPATH=. "$OURS_PYTHON" benchmarks/mediate.py --sizes toy "$SIZE" --device "$DEVICE" \
    --root "$DATA" --batch-sizes 1 16 64 --length "${LENGTHS%%,*}" --ct-python "$CT_PYTHON")
  if [ -n "${DRY_RUN:-}" ]; then
    run "${steer[@]}"
  else
    printf '\n## Many steerings of one prompt (benchmarks/mediate.py)\n\n```\n' >>"$TABLES"
    "${steer[@]}" | grep -v "^Moving model to device" | tee -a "$TABLES"
    printf '```\n' >>"$TABLES"
  fi
fi
[ -n "${DRY_RUN:-}" ] || echo "tables: $TABLES"
