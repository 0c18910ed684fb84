#!/usr/bin/env bash
# Installs libmlstm's build and test dependencies from Debian 12's packages (CMake, a C compiler, the
# Khronos OpenCL ICD loader and headers, PoCL for OpenCL on the CPU, cmocka, clang with libFuzzer, valgrind,
# CLBlast for the OpenCL materialised algorithm, Python 3 for the test that the generated kernel sources are current).
# The CUDA toolkit is not a Debian package: when /usr/local/cuda/bin/nvcc exists the CUDA backend is built too.
set -euo pipefail
pkgs=(cmake make gcc g++ clang libclang-rt-14-dev ocl-icd-opencl-dev opencl-c-headers pocl-opencl-icd
      libcmocka-dev clinfo valgrind pkg-config libclblast-dev python3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
