/* Private declarations of the OpenCL backend (backends/opencl): the per-context state, error recording,
 * and the program cache with its tile choice (cl_program.c). Nothing here is exported; the backend's only
 * public symbol is mlstm_backend_opencl_ops (backend_opencl.c). */
#ifndef MLSTM_CL_INTERNAL_H
#define MLSTM_CL_INTERNAL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#if defined(__APPLE__)
#include <OpenCL/opencl.h>
#else
#include <CL/cl.h>
#endif
#include "backend.h"

/* The two programs (common.cl is prepended to each) and the kernels they hold. */
enum { MLSTM_CL_FWD = 0, MLSTM_CL_BWD = 1 };
enum { MLSTM_CL_K_FWD = 0, MLSTM_CL_K_BWD_PREP = 0, MLSTM_CL_K_BWD_DKDV = 1, MLSTM_CL_K_BWD_DQ = 2,
       MLSTM_CL_K_BWD_GATES = 3, MLSTM_CL_MAX_KERNELS = 4 };

/* Tile configuration: the -D tunables of kernels_cl/common.cl. */
typedef struct mlstm_cl_tiles {
    int block;   /* MLSTM_BLOCK: sequence positions per query / key tile */
    int rows;    /* MLSTM_WG_ROWS */
    int cols;    /* MLSTM_WG_COLS; work-group size rows * cols */
    int dchunk;  /* MLSTM_DCHUNK */
    int rchunk;  /* MLSTM_RCHUNK */
} mlstm_cl_tiles;

/* One built program, cached per context. */
typedef struct mlstm_cl_program {
    char request[96];    /* what was asked: direction, dtype, dqk, dv, grad mode */
    char options[512];   /* the full build-options string: the cache key of the binary */
    int direction;       /* MLSTM_CL_FWD or MLSTM_CL_BWD */
    mlstm_cl_tiles tiles;
    cl_program program;
    cl_kernel kernels[MLSTM_CL_MAX_KERNELS];
    const char *names[MLSTM_CL_MAX_KERNELS];
    int n_kernels;
    struct mlstm_cl_program *next;
} mlstm_cl_program;

typedef struct mlstm_cl_ctx {
    cl_platform_id platform;
    cl_device_id device;
    cl_context context;
    cl_command_queue queue;
    cl_ulong local_mem;       /* CL_DEVICE_LOCAL_MEM_SIZE */
    cl_ulong max_alloc;       /* CL_DEVICE_MAX_MEM_ALLOC_SIZE */
    size_t max_wg;            /* CL_DEVICE_MAX_WORK_GROUP_SIZE */
    cl_uint address_bits;     /* CL_DEVICE_ADDRESS_BITS */
    int retained_device;      /* 1: cl_destroy releases a clRetainDevice (contexts on the caller's objects) */
    int generic_dims;         /* 1 on CPU devices: programs serve every head dimension (see cl_program.c) */
    char device_name[256];
    char kernel_dir[1024];    /* "" = embedded sources; else .cl files are read from here (development) */
    char *error;              /* last failure detail (grows for build logs); never NULL after init */
    size_t error_cap;
    mlstm_cl_program *programs;
    struct mlstm_cl_mat *mat; /* the materialised algorithm's programs and workspace (materialized_cl.c), or NULL */
} mlstm_cl_ctx;

/* Records a formatted detail as the context's last error and returns status. */
int mlstm_cl_fail(mlstm_cl_ctx *cx, int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* "CL_OUT_OF_RESOURCES" for -5, etc. */
const char *mlstm_cl_error_name(cl_int err);
/* The mlstm_status for a failed CL call. */
int mlstm_cl_status(cl_int err);

/* Embedded kernel source by file name ("common", "fwd", "bwd"): the one place that maps names to text. */
const char *mlstm_cl_source(const char *name, size_t *len);
/* The source build() uses: the embedded text, or <kernel_dir>/<name>.cl read into *owned (free it). */
int mlstm_cl_load_source(mlstm_cl_ctx *cx, const char *name, const char **text, size_t *len, char **owned);
/* The built program for one direction and problem (cached; builds on first use). */
int mlstm_cl_get_program(mlstm_cl_ctx *cx, int direction, const mlstm_params *p, const mlstm_cl_program **out);
void mlstm_cl_release_programs(mlstm_cl_ctx *cx);

/* materialized_cl.c: the materialised algorithm (CLBlast SGEMMs and kernels_cl/materialized.cl). */
int mlstm_cl_mat_workspace_size(mlstm_cl_ctx *cx, const mlstm_params *p, int backward, uint64_t *bytes);
/* Builds the materialised algorithm's program for dtype ahead of the calls (plans); MLSTM_ERR_UNSUPPORTED without
 * CLBlast */
int mlstm_cl_mat_build(mlstm_cl_ctx *cx, int dtype);
int mlstm_cl_mat_fwd(mlstm_cl_ctx *cx, const mlstm_params *p);
int mlstm_cl_mat_bwd(mlstm_cl_ctx *cx, const mlstm_params *p);
void mlstm_cl_mat_release(mlstm_cl_ctx *cx);

#endif /* MLSTM_CL_INTERNAL_H */
