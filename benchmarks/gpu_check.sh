#!/usr/bin/env bash
# The prepared GPU check, for a session lent a CUDA device (a few minutes; the first Triton compiles take most):
# the Triton kernels compiled and tested on the GPU against the CPU kernel (and a ProxAdam step on CUDA checked
# for host syncs), then bench_prox.py on the device (each operator as a ratio to a device-to-device copy of the
# same tensor; the ProxAdam rows), then the 2:4 kernels under each launch configuration
# (bench_triton_configs.py). Logs go to $OUT (the device tool's folder) when it is set. It needs torch with
# CUDA, Triton, pytest and hypothesis.
#
#     bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -x -p no:cacheprovider tests/prox/test_triton.py tests/optim/test_proxadam.py -k "triton or cuda" \
  2>&1 | tee "$out/gpu_tests.log"
python3 benchmarks/bench_prox.py --device cuda --repeat 20 2>&1 | tee "$out/gpu_bench.log"
# Each launch configuration (groups per program x warps; the list of the second launch on and off) on the 2:4
# cases where they matter.
python3 benchmarks/bench_triton_configs.py 2>&1 | tee "$out/gpu_configs.log"
