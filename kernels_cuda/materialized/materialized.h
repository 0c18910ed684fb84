/* libmlstm CUDA kernels of the materialised algorithm (kernels_cuda/materialized/materialized.cu): plain C entry
 * points that the host code (backends/cuda/materialized_cuda.c) calls between its cuBLAS products. Same kernels,
 * names and workspace arrays as kernels_cl/materialized.cl. Each returns a cudaError_t value (0 = enqueued);
 * streams travel as void *. Workspace arrays are f32 device pointers; slice g = b * NH + h of an S-long array starts
 * at g * S, of an S x S matrix at g * S * S, of the per-tile sums at g * ntiles * S. */
#ifndef MLSTM_CUDA_MATERIALIZED_H
#define MLSTM_CUDA_MATERIALIZED_H

#include <stdint.h>
#include "params.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MLSTM_MAT_TILE 32 /* tile edge of the element kernels (MLSTM_MAT_TILE_EDGE of backends/mat_layout.h) */

/* dst[g][s][d] (contiguous f32) = tensor t (storage dtype) */
int mlstm_mat_cu_pack(const mlstm_tensor_arg *t, int dtype, float *dst, int64_t G, int S, int64_t NH, int D,
                      void *stream);
/* tensor t (storage dtype) = src[g][s][d], divided by den[g][s] when den is not NULL */
int mlstm_mat_cu_store(const float *src, const float *den, const mlstm_tensor_arg *t, int dtype, int64_t G, int S,
                       int64_t NH, int D, void *stream);
/* F as (hi, lo) pairs; with mrow != NULL (forward) also m into mrow and the tensor m */
int mlstm_mat_cu_scan(const mlstm_tensor_arg *f, const mlstm_tensor_arg *i, const mlstm_tensor_arg *m, float *Fh,
                      float *Fl, float *mrow, int64_t G, int S, int64_t NH, void *stream);
/* Sm := C (0 above the diagonal), tile row sums of C into (rh, rl); round_tf32: C rounded to TF32's 10-bit
 * mantissa (the next product then runs exactly on TF32 tensor cores) */
int mlstm_mat_cu_fwd_tile(float *Sm, const float *Fh, const float *Fl, const float *mrow, float *rh, float *rl,
                          const mlstm_tensor_arg *i, int64_t G, int S, int64_t NH, float scale, int round_tf32,
                          void *stream);
/* l, n (signed, into tensor n), |n| + eps into den */
int mlstm_mat_cu_fwd_rows(const float *mrow, const float *rh, const float *rl, float *den, const mlstm_tensor_arg *n,
                          int64_t G, int S, int64_t NH, float eps, void *stream);
/* m into mrow, 1 / (|n| + eps) into qn, delta (0 when !exact) into qd */
int mlstm_mat_cu_bwd_rows(const mlstm_tensor_arg *h, const mlstm_tensor_arg *dh, int dtype, const mlstm_tensor_arg *m,
                          const mlstm_tensor_arg *n, float *mrow, float *qn, float *qd, int64_t G, int S, int64_t NH,
                          int dv, int exact, float eps, void *stream);
/* Pm := P, Sm := C / (|n| + eps) (0 above the diagonal), tile row / column sums of M = P * scale * S */
int mlstm_mat_cu_bwd_tile(float *Sm, float *Pm, const float *Fh, const float *Fl, const float *mrow, const float *qn,
                          const float *qd, float *rh, float *rl, float *ch, float *cl, const mlstm_tensor_arg *i,
                          int64_t G, int S, int64_t NH, float scale, int round_tf32, void *stream);
/* di, and df = (reverse cumsum of dF) * sigmoid(-f) */
int mlstm_mat_cu_bwd_gates(float *rh, float *rl, const float *ch, const float *cl, const mlstm_tensor_arg *f,
                           const mlstm_tensor_arg *di, const mlstm_tensor_arg *df, int64_t G, int S, int64_t NH,
                           void *stream);

#ifdef __cplusplus
}
#endif
#endif /* MLSTM_CUDA_MATERIALIZED_H */
