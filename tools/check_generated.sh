#!/usr/bin/env bash
# Checks that the committed outputs of the CUDA kernel generators are current: reruns kernels_cuda/gen_instances.py
# (the instance sources, inst/instances.cmake, inst/registry.inc) and kernels_cuda/gen_wgmma.py
# (common/wgmma_ops.cuh) into a temporary folder and compares. Exit 1 with the differing files if one is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 > /dev/null || { echo "check_generated: SKIP: python3 not found (tools/install_deps.sh installs it)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 kernels_cuda/gen_instances.py "$tmp/inst"
python3 kernels_cuda/gen_wgmma.py "$tmp/wgmma_ops.cuh"
fail=0
if ! diff -r -q "$tmp/inst" kernels_cuda/inst; then
  echo "check_generated: kernels_cuda/inst is stale: rerun python3 kernels_cuda/gen_instances.py"; fail=1
fi
if ! diff -q "$tmp/wgmma_ops.cuh" kernels_cuda/common/wgmma_ops.cuh; then
  echo "check_generated: kernels_cuda/common/wgmma_ops.cuh is stale: rerun python3 kernels_cuda/gen_wgmma.py"; fail=1
fi
[ $fail -eq 0 ] && echo "check_generated: the generated kernel sources are current"
exit $fail
