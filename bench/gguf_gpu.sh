#!/usr/bin/env bash
# The GGUF bench on a CUDA box: the same command and the same table as on the CPU (bench/README.md, "GGUF"),
# with QLoRA (nf4 + double quantization) and bf16 where the GPU has it, the whole HWU64 train split for 3 epochs on
# every layer. Run from the repository root, in a venv with the trainer installed for CUDA:
#   pip install torch  (a CUDA build)  &&  pip install -e '.[gguf,trainer,qlora]'
#   bench/gguf_gpu.sh [more bench/gguf.py options]
# Evaluation and serving stay on the CPU (llama.cpp, as on a device); only the fine-tune uses the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
"$PY" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("bench/gguf_gpu.sh: no CUDA device here (torch.cuda.is_available() is False); use python -m bench.gguf")
print(f"GPU: {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}", file=sys.stderr)
PY
exec "$PY" -m bench.gguf --lean --qlora on --precision auto --epochs 3 --top-layers 0 --extract-share 1.0 \
  --extract-epochs 3 --threads "$(nproc)" "$@"
