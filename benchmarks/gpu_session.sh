#!/usr/bin/env bash
# One lent-GPU session for the kernels (issue 4), prepared to fit the device tool's 15 minutes:
# the compiled Triton kernels against their references, then the kernel and model benchmarks.
# Everything it measures lands under OUT (pytest-benchmark JSON + the printed tables).
#
# Prepare once on the CPU machine (the device has torch, triton and onnxruntime but no
# onnx/onnxscript and no internet; ../shared does not travel, so two fixtures, 24 MB, go along):
#   echo /.device/ >> .git/info/exclude
#   mkdir -p .device/shared/fixtures/ifdd .device/shared/fixtures/s4d
#   cp ../shared/fixtures/ifdd/issm.pt .device/shared/fixtures/ifdd/
#   cp ../shared/fixtures/s4d/moae_block.pt .device/shared/fixtures/s4d/
# Then, with the device tool (carry [".device"], timeout ~540 s):
#   DFER_SHARED=.device/shared bash benchmarks/gpu_session.sh "$OUT"
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_session.sh OUT_DIR}
mkdir -p "$out"
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$out/machine.txt"

# Parity first: a wrong kernel makes its timings worthless. The ONNX export test needs onnxscript.
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_kernel_lifting_split.py tests/test_kernel_gated_expert_mlp.py \
    -k "not export" 2>&1 | tee "$out/kernel_tests.txt"
# Kernel benchmarks (ours vs the official-style module, eager and compiled references, copy floor).
timeout 150 python3 -m pytest -q -p no:cacheprovider benchmarks/bench_kernels.py \
    --benchmark-json="$out/bench_kernels.json" 2>&1 | tee "$out/bench_kernels.txt"
# Whole models: eager vs torch.compile vs our kernels (autotuning takes minutes: last, and bounded).
timeout 200 python3 -m pytest -q -p no:cacheprovider benchmarks/bench_models_gpu.py \
    --benchmark-json="$out/bench_models.json" 2>&1 | tee "$out/bench_models.txt"
