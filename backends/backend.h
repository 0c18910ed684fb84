/* The backend interface: one const struct of function pointers per backend (ggml style). The API core
 * (api/) validates every argument once, then calls these; backends trust their inputs. Each backend
 * exports only its ops struct (mlstm_backend_cuda_ops, mlstm_backend_opencl_ops); the rest is static. */
#ifndef MLSTM_BACKEND_H
#define MLSTM_BACKEND_H

#include <stddef.h>
#include "mlstm.h"
#include "params.h"

#define MLSTM_BACKEND_ABI_VERSION 2 /* 2: the optional plan members */

/* Device choice handed to init, after options and environment are resolved. */
typedef struct mlstm_backend_config {
    int device;            /* device index within the platform/driver, >= 0 */
    int opencl_platform;   /* OpenCL platform index, or -1 for "first platform with a device" */
    int cuda_small_tiles;  /* tuning: CUDA small-grid tile dispatch, -1 auto, 0 off, 1 on, -2 build default */
    int cuda_f32_tc;       /* tuning: CUDA f32 forward on tensor cores, 0 off, 1 or -1 on, -2 build default */
    int cuda_wgmma;        /* tuning: CUDA sm_90a warpgroup-MMA forward, -1 auto, 0 off, 1 on, -2 build default */
    char opencl_kernel_dir[1024]; /* development: load the kernels_cl .cl files from here ("" = embedded) */
    int algo;              /* MLSTM_ALGO (an mlstm_algo); the API core keeps it, backends need not read it */
    char cuda_force[256];  /* tests: CUDA kernel variants replacing dispatch's choice (MLSTM_CUDA_FORCE, "" = none) */
    int cuda_d512;         /* CUDA D = 512 tensor-core class (DQK 257..512), 0 off, 1 on, -2 build default */
} mlstm_backend_config;

typedef struct mlstm_backend_ops {
    int abi_version;       /* MLSTM_BACKEND_ABI_VERSION */
    const char *name;      /* "cuda", "opencl" */

    /* Counts usable devices; no side effects beyond driver initialisation. Returns MLSTM_OK with
     * *n_devices >= 0 (0: no device, detail in msg), or an error status with the detail in msg. */
    int (*probe)(int *n_devices, char *msg, size_t msg_len);
    /* Creates the per-context state on one device. On failure writes the detail into msg. */
    int (*init)(const mlstm_backend_config *cfg, void **impl, char *msg, size_t msg_len);
    void (*destroy)(void *impl);                    /* waits for queued work, frees everything */
    const char *(*device_name)(void *impl);

    int (*buffer_alloc)(void *impl, size_t bytes, void **mem);
    void (*buffer_free)(void *impl, void *mem);
    int (*buffer_write)(void *impl, void *mem, size_t offset_bytes, size_t bytes, const void *src); /* blocking */
    int (*buffer_read)(void *impl, void *mem, size_t offset_bytes, size_t bytes, void *dst);        /* blocking */

    /* (optional, NULL = everything valid is supported) MLSTM_OK or MLSTM_ERR_UNSUPPORTED. */
    int (*supports)(void *impl, const mlstm_params *p, int backward);
    int (*fwd)(void *impl, const mlstm_params *p);  /* asynchronous */
    int (*bwd)(void *impl, const mlstm_params *p);  /* asynchronous */
    int (*synchronize)(void *impl);
    /* Detail of the backend's last failure (CUDA error name, OpenCL build log); "" if none. */
    const char *(*last_error)(void *impl);
    /* (optional, NULL = not reported) the kernels the last fwd/bwd enqueued, for logs and tests */
    const char *(*last_kernels)(void *impl);
    /* (optional, NULL = no materialised algorithm) Workspace bytes the materialised algorithm needs for p
     * (p->algo is MLSTM_ALGO_MATERIALIZED; tensor handles may be NULL). MLSTM_OK, MLSTM_ERR_UNSUPPORTED (with
     * the reason, e.g. built without its BLAS) or MLSTM_ERR_SIZE_OVERFLOW. */
    int (*workspace_size)(void *impl, const mlstm_params *p, int backward, uint64_t *bytes);

    /* ---- optional members (NULL-safe); new ones are appended ---- */
    /* Plans the problem p (sizes, scalars, resolved strides; memory handles NULL; p->plan_algo: each direction's
     * algorithm) for directions (MLSTM_PLAN_FWD | MLSTM_PLAN_BWD), after supports() accepted it: fixes the kernel
     * choice and builds what the calls need (the OpenCL programs), so that fwd/bwd with p->plan set neither compile
     * nor allocate. *plan: state handed back
     * as p->plan (may stay NULL); *workspace_bytes: device scratch the planned calls need (0: none). NULL member:
     * plans carry no backend state and need no workspace. */
    int (*plan_create)(void *impl, const mlstm_params *p, unsigned directions, void **plan, size_t *workspace_bytes);
    void (*plan_destroy)(void *impl, void *plan);   /* frees what plan_create made; plan may be NULL */
    /* 1 where the context's device is a CPU (the automatic algorithm choice keeps its GPU measurements off it);
     * NULL member: a GPU */
    int (*device_is_cpu)(void *impl);
    /* 1 where the fused kernels serve p (backward: its backward) on the device's tensor cores, 0 where they fall back
     * to plain kernels (CUDA: the SIMT kernels); the automatic algorithm choice keeps such calls fused where its
     * table chose the materialised algorithm only for want of them. NULL member: never */
    int (*fused_on_tensor_cores)(void *impl, const mlstm_params *p, int backward);
} mlstm_backend_ops;

#ifdef MLSTM_HAVE_CUDA
extern const mlstm_backend_ops mlstm_backend_cuda_ops;
#endif
#ifdef MLSTM_HAVE_OPENCL
extern const mlstm_backend_ops mlstm_backend_opencl_ops;
#endif

#endif /* MLSTM_BACKEND_H */
