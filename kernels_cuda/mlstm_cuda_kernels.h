/* libmlstm CUDA kernels: the C entry points the host backend (backends/cuda/backend_cuda.c) calls. Plain C
 * header (no CUDA types): streams travel as void*, failures come back as a cudaError_t value plus where. */
#ifndef MLSTM_CUDA_KERNELS_H
#define MLSTM_CUDA_KERNELS_H

#include <stddef.h>
#include "params.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where a CUDA call failed: code is the cudaError_t value (0 = success). */
typedef struct mlstm_cuda_fail {
    int code;
    const char *what; /* "cudaFuncSetAttribute", "mlstm_fwd_kernel launch", ... */
    const char *file;
    int line;
} mlstm_cuda_fail;

/* The dispatch state of one context (opaque): the instances its device accepted and the policies chosen at setup.
 * Immutable once set up, so contexts on different devices or with different settings never steer each other. */
typedef struct mlstm_cuda_dispatch mlstm_cuda_dispatch;

/* What a call enqueued: the kernel variants' names ("fwd.wg.bf16.d128", "dkdv.wg.f16.d64+dq.wg_split.f16.d64", ...,
 * prefixed "headdim.dDxN+" where head_dims.cu served the call through N slices of the D instance). */
typedef struct mlstm_cuda_trace {
    char kernels[160];
} mlstm_cuda_trace;

/* Sets up the current device for the kernels (raises every instance's dynamic shared-memory limit; a refused one
 * only disables that instance) and returns the context's dispatch state in *out (release it with
 * mlstm_cuda_kernels_release). small_tiles: the small-grid dispatch, -1 auto, 0 off, 1 on, -2 the build default
 * (MLSTM_SMALL_TILES_DEFAULT). f32_tc: 0 keeps f32 on the SIMT path, 1 or -1 lets eligible calls use the tensor-core
 * f32 forward and backward (3xTF32, or TF32 under MLSTM_MATH_TF32), -2 the build default (MLSTM_F32_TC_DEFAULT).
 * wgmma: the sm_90a warpgroup-MMA kernels (compute capability 9.0, builds that include sm_90a), 0 off, 1 or -1
 * whenever eligible, -2 the build default (MLSTM_WGMMA_DEFAULT). d512: the D = 512 tensor-core class (DQK 257..512,
 * sm_90), 1 on, 0 or -1 off, -2 the build default (MLSTM_D512_DEFAULT). force (tests; NULL or "" for none): comma-separated
 * variant names (mlstm_cuda_kernels_variant_name) that replace dispatch's choice for the calls of their storage
 * class; such a call fails with cudaErrorNotSupported where the forced instance cannot serve it. */
int mlstm_cuda_kernels_setup(mlstm_cuda_fail *fail, int small_tiles, int f32_tc, int wgmma, int d512, const char *force,
                             mlstm_cuda_dispatch **out);
void mlstm_cuda_kernels_release(mlstm_cuda_dispatch *ds);
/* The registry of kernel variants: name i (1, 2, ...), NULL past the last. */
const char *mlstm_cuda_kernels_variant_name(int i);
/* Device workspace bytes the call of p needs (0 for most calls): head dims that no instance serves as they stand
 * (f16/bf16 column counts that are not multiples of 8, f32 heads other than DQK = DV in 64/128/256, DV above 256
 * (slices, the backward's dq / dk sums), rows not 16-byte aligned) run on a tensor-core instance through padded and
 * sliced copies staged there (kernels_cuda/head_dims.cu). */
size_t mlstm_cuda_kernels_workspace_size(const mlstm_cuda_dispatch *ds, const mlstm_params *p, int backward);
/* Enqueues the forward / backward of p on stream (a cudaStream_t), with ws (ws_bytes, at least
 * mlstm_cuda_kernels_workspace_size; device memory, unused by other work until the call completes). Asynchronous;
 * no allocation. tr (may be NULL) receives the names of the kernels enqueued. */
int mlstm_cuda_kernels_fwd(const mlstm_cuda_dispatch *ds, const mlstm_params *p, void *stream, void *ws,
                           size_t ws_bytes, mlstm_cuda_trace *tr, mlstm_cuda_fail *fail);
int mlstm_cuda_kernels_bwd(const mlstm_cuda_dispatch *ds, const mlstm_params *p, void *stream, void *ws,
                           size_t ws_bytes, mlstm_cuda_trace *tr, mlstm_cuda_fail *fail);
/* Which path a call takes (for logs and tests): "tc" (f16/bf16 tensor cores), "tc32" (f32, 3xTF32 tensor
 * cores), "tf32" (f32, TF32 tensor cores, MLSTM_MATH_TF32) or "simt". */
const char *mlstm_cuda_kernels_path(const mlstm_cuda_dispatch *ds, const mlstm_params *p, int backward);

#ifdef __cplusplus
}
#endif
#endif /* MLSTM_CUDA_KERNELS_H */
