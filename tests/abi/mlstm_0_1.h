/* The mlstm_desc of libmlstm 0.1 (14 tensor layouts, before the struct could grow) and the few declarations a
 * program built against that header uses, for the ABI test: test_abi_old.c is compiled against this file instead
 * of api/mlstm.h, exactly as an application built before the desc grew. Keep it frozen. */
#ifndef MLSTM_0_1_H
#define MLSTM_0_1_H

#include <stddef.h>
#include <stdint.h>

typedef struct mlstm_context mlstm_context;
typedef struct mlstm_plan mlstm_plan;

typedef struct mlstm_layout {
    int64_t batch, head, seq;
} mlstm_layout;

typedef struct mlstm_desc {
    uint32_t struct_size;
    int64_t batch, heads, seq_len, dqk, dv;
    int dtype;
    float eps;
    float scale;
    int grad_mode;
    int math_mode;
    mlstm_layout layout[14];
} mlstm_desc;

/* the calls the old program makes; the sized init is what an inline mlstm_desc_init expands to */
void mlstm_desc_init_sized(mlstm_desc *desc, size_t size);
int mlstm_parallel_fwd_host(mlstm_context *ctx, const mlstm_desc *desc, const void *q, const void *k, const void *v,
                            const float *i, const float *f, void *h, float *m, float *n);
size_t mlstm_tensor_extent(const mlstm_desc *desc, int tensor);
int mlstm_plan_create(mlstm_context *ctx, const mlstm_desc *desc, unsigned directions, mlstm_plan **out);
void mlstm_plan_destroy(mlstm_plan *plan);

#endif /* MLSTM_0_1_H */
