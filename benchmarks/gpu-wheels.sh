#!/usr/bin/env bash
# The wheels benchmarks/gpu.sh installs on a CUDA machine that has no package registry (WHEELS=DIR):
# run here, where pip works; DIR then travels to that machine. Only what such a machine's image lacks
# (its image holds torch, transformers 5.x, numpy, pandas, ...; see benchmarks/README.md, "GPU"):
#   DIR/common  both environments: TransformerLens' small pure-Python needs
#   DIR/ours    tl_clt: TransformerLens 3.9 (tl_clt itself runs from the checkout)
#   DIR/ct      circuit-tracer 0.5.0: TransformerLens 2.x, transformers 4.57.3 and the hub and tokenizers
#               versions it pins, pydantic
# wandb (imported by TransformerLens only when training) and nnsight (circuit-tracer's other backend)
# are left out. ~23 MB in all.
#   benchmarks/gpu-wheels.sh .whl [PYTHON_VERSION]     (default 3.12, the CUDA image's)
set -euo pipefail
dir=${1:?usage: $0 DIR [PYTHON_VERSION]}
pyver=${2:-3.12}
get() {
  local sub=$1
  shift
  mkdir -p "$dir/$sub"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir/$sub" "$@"
}
get common better-abc==0.0.3 fancy-einsum==0.0.3 typeguard==4.6.1 multiprocess==0.70.16 dill==0.3.8
get ours transformer-lens==3.9.0 beartype==0.23.1 datasets==5.2.0
get ct circuit-tracer==0.5.0 transformer-lens==2.18.0 beartype==0.14.1 datasets==3.6.0 transformers==4.57.3 \
  tokenizers==0.22.2 huggingface-hub==0.36.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5
du -sh "$dir"
