#!/usr/bin/env bash
# The prepared GPU check, for a session lent a CUDA device (a few minutes; the first Triton compiles take most):
# the Triton kernels compiled and tested on the GPU against the CPU kernel, then bench_prox.py on the device
# (each operator as a ratio to a device-to-device copy of the same tensor; the ProxAdam rows), and the operators
# again with TORCHPROX_TRITON_COMPACT=0. Logs go to $OUT
# (the device tool's folder) when it is set. It needs torch with CUDA, Triton, pytest and hypothesis.
#
#     bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -x -p no:cacheprovider tests/prox/test_triton.py 2>&1 | tee "$out/gpu_tests.log"
python3 benchmarks/bench_prox.py --device cuda --repeat 20 2>&1 | tee "$out/gpu_bench.log"
# The same operators with one launch per call (the groups outside the convex regime solved in their own block,
# never listed for the second launch): what the list saves or costs.
TORCHPROX_TRITON_COMPACT=0 python3 benchmarks/bench_prox.py --device cuda --repeat 20 --layers 0 2>&1 \
  | tee "$out/gpu_bench_single_launch.log"
