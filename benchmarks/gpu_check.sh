#!/usr/bin/env bash
# The prepared GPU check, for a session lent a CUDA device (several minutes; the first Triton compiles take
# most). In order of what matters most, so that a run cut short still brings back the first parts: the 2:4
# kernels tested on the GPU against the CPU kernel and a ProxAdam step on CUDA under CUDA's sync checker;
# bench_prox.py on the device (each operator as a ratio to a device-to-device copy of the same tensor; the
# ProxAdam rows); the 2:4 kernels under each launch configuration (bench_triton_configs.py); then every Triton
# test. Logs go to $OUT (the device tool's folder) when it is set. It needs torch with CUDA, Triton, pytest and
# hypothesis.
#
#     bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/prox/test_triton.py tests/optim/test_proxadam.py \
  -k "(triton and 2-4 and (same_objective or depend_on_its_block)) or fast_newton or cuda_step" 2>&1 | tee "$out/gpu_quick_tests.log"
python3 benchmarks/bench_prox.py --device cuda --repeat 20 2>&1 | tee "$out/gpu_bench.log"
python3 benchmarks/bench_triton_configs.py 2>&1 | tee "$out/gpu_configs.log"
python3 -m pytest -q -p no:cacheprovider tests/prox/test_triton.py 2>&1 | tee "$out/gpu_tests.log"
