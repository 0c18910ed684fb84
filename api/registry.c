/* The backend registry (a static table in auto-selection order: CUDA, then OpenCL) and context creation:
 * options first, then the environment (MLSTM_BACKEND, MLSTM_DEVICE, MLSTM_OPENCL_PLATFORM), then auto.
 * MLSTM_ALGO is read here too and kept in the context. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "internal.h"

static const mlstm_backend_ops *const registry[] = {
#ifdef MLSTM_HAVE_CUDA
    &mlstm_backend_cuda_ops,
#endif
#ifdef MLSTM_HAVE_OPENCL
    &mlstm_backend_opencl_ops,
#endif
    NULL
};

/* Every backend name libmlstm knows, compiled in or not. */
static const char *const known_backends[] = {"cuda", "opencl"};

int mlstm_registry_count(void) { return (int)(sizeof registry / sizeof registry[0]) - 1; }

const mlstm_backend_ops *mlstm_registry_at(int index)
{
    return (index >= 0 && index < mlstm_registry_count()) ? registry[index] : NULL;
}

int mlstm_backend_count(void) { return mlstm_registry_count(); }

const char *mlstm_backend_name_at(int index)
{
    const mlstm_backend_ops *ops = mlstm_registry_at(index);
    return ops ? ops->name : NULL;
}

void mlstm_options_init_sized(mlstm_options *opt, size_t size)
{
    if (opt == NULL || size < sizeof opt->struct_size)
        return;
    mlstm_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = (uint32_t)(size <= UINT32_MAX ? size : UINT32_MAX);
    o.backend = NULL;
    o.device = -1;
    o.opencl_platform = -1;
    memset(opt, 0, size); /* members of a newer header default to zero (the growth rule in mlstm.h) */
    memcpy(opt, &o, size < sizeof o ? size : sizeof o);
}

int mlstm_context_adopt(const mlstm_backend_ops *ops, void *impl, mlstm_context **out)
{
    mlstm_context *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL) {
        ops->destroy(impl);
        mlstm_set_global_error("out of host memory allocating the context");
        return MLSTM_ERR_OUT_OF_MEMORY;
    }
    ctx->magic = MLSTM_CONTEXT_MAGIC;
    ctx->ops = ops;
    ctx->impl = impl;
    *out = ctx;
    return MLSTM_OK;
}

static void compiled_list(char *out, size_t len)
{
    out[0] = '\0';
    for (int b = 0; b < mlstm_registry_count(); b++) {
        size_t used = strlen(out);
        snprintf(out + used, len - used, "%s%s", b ? ", " : "", registry[b]->name);
    }
    if (!out[0])
        snprintf(out, len, "none");
}

static int create_on(const mlstm_backend_ops *ops, const mlstm_backend_config *cfg, mlstm_context **out)
{
    char msg[MLSTM_ERRMSG_MAX / 2];
    msg[0] = '\0';
    if (ops->abi_version != MLSTM_BACKEND_ABI_VERSION) {
        mlstm_set_global_error("backend '%s' has ABI version %d, expected %d", ops->name, ops->abi_version,
                               MLSTM_BACKEND_ABI_VERSION);
        return MLSTM_ERR_INTERNAL;
    }
    int n = 0;
    int st = ops->probe(&n, msg, sizeof msg);
    if (st != MLSTM_OK || n <= 0) {
        mlstm_set_global_error("backend '%s' has no usable device%s%s", ops->name, msg[0] ? ": " : "", msg);
        return st != MLSTM_OK ? st : MLSTM_ERR_NO_DEVICE;
    }
    void *impl = NULL;
    msg[0] = '\0';
    st = ops->init(cfg, &impl, msg, sizeof msg);
    if (st != MLSTM_OK) {
        mlstm_set_global_error("backend '%s' failed to initialise device %d: %s%s%s", ops->name, cfg->device,
                               mlstm_status_string(st), msg[0] ? ": " : "", msg);
        return st;
    }
    st = mlstm_context_adopt(ops, impl, out);
    if (st == MLSTM_OK)
        (*out)->env_algo = cfg->algo;
    return st;
}

int mlstm_context_create(const mlstm_options *opt, mlstm_context **out)
{
    mlstm_set_global_error("%s", "");
    if (out == NULL) {
        mlstm_set_global_error("mlstm_context_create: out is NULL");
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    *out = NULL;
    mlstm_options o;
    mlstm_options_init(&o);
    if (opt != NULL) {
        char msg[512];
        if (mlstm_load_struct(opt, "mlstm_options", MLSTM_OPTIONS_SIZE_V1, sizeof o, &o, msg, sizeof msg) != MLSTM_OK) {
            mlstm_set_global_error("mlstm_context_create: %s", msg);
            return MLSTM_ERR_INVALID_ARGUMENT;
        }
    }
    const char *name = o.backend ? o.backend : mlstm_env_string("MLSTM_BACKEND");
    if (name == NULL)
        name = "auto";
    mlstm_backend_config cfg = {o.device, o.opencl_platform, mlstm_env_tristate("MLSTM_CUDA_SMALL_TILES"),
                                mlstm_env_tristate("MLSTM_CUDA_F32_TC"),
                                mlstm_env_tristate("MLSTM_CUDA_WGMMA"), "", MLSTM_ALGO_AUTO, "",
                                mlstm_env_tristate("MLSTM_CUDA_D512")};
    const char *force = mlstm_env_string("MLSTM_CUDA_FORCE");
    if (force != NULL) {
        if (strlen(force) >= sizeof cfg.cuda_force) {
            mlstm_set_global_error("MLSTM_CUDA_FORCE is longer than %zu characters", sizeof cfg.cuda_force - 1);
            return MLSTM_ERR_INVALID_ARGUMENT;
        }
        snprintf(cfg.cuda_force, sizeof cfg.cuda_force, "%s", force);
    }
    const char *kdir = mlstm_env_string("MLSTM_OPENCL_KERNEL_DIR");
    if (kdir != NULL) {
        if (strlen(kdir) >= sizeof cfg.opencl_kernel_dir) {
            mlstm_set_global_error("MLSTM_OPENCL_KERNEL_DIR is longer than %zu characters",
                                   sizeof cfg.opencl_kernel_dir - 1);
            return MLSTM_ERR_INVALID_ARGUMENT;
        }
        snprintf(cfg.opencl_kernel_dir, sizeof cfg.opencl_kernel_dir, "%s", kdir);
    }
    if (cfg.device < -1 || cfg.opencl_platform < -1) {
        mlstm_set_global_error("mlstm_context_create: device (%d) and opencl_platform (%d) must be >= 0 or -1",
                               cfg.device, cfg.opencl_platform);
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    if (cfg.device < 0 && mlstm_env_index("MLSTM_DEVICE", &cfg.device) != MLSTM_OK) {
        mlstm_set_global_error("MLSTM_DEVICE='%s' is not a device index (0, 1, ...)", mlstm_env_string("MLSTM_DEVICE"));
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    if (cfg.opencl_platform < 0 && mlstm_env_index("MLSTM_OPENCL_PLATFORM", &cfg.opencl_platform) != MLSTM_OK) {
        mlstm_set_global_error("MLSTM_OPENCL_PLATFORM='%s' is not a platform index (0, 1, ...)",
                               mlstm_env_string("MLSTM_OPENCL_PLATFORM"));
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    if (cfg.device < 0)
        cfg.device = 0;
    const int algo = mlstm_env_algo();
    if (algo < 0) {
        mlstm_set_global_error("MLSTM_ALGO='%s' is not an algorithm (auto, fused, materialized)",
                               mlstm_env_string("MLSTM_ALGO"));
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    cfg.algo = algo;

    char compiled[256];
    compiled_list(compiled, sizeof compiled);
    if (strcasecmp(name, "auto") == 0) {
        char why[MLSTM_ERRMSG_MAX / 2];
        why[0] = '\0';
        for (int b = 0; b < mlstm_registry_count(); b++) {
            int st = create_on(registry[b], &cfg, out);
            if (st == MLSTM_OK)
                return MLSTM_OK;
            size_t used = strlen(why);
            snprintf(why + used, sizeof why - used, "%s%s", used ? "; " : "", mlstm_last_error_global());
        }
        mlstm_set_global_error("auto backend selection found no usable device (compiled backends: %s)%s%s",
                               compiled, why[0] ? ": " : "", why);
        return MLSTM_ERR_NO_DEVICE;
    }
    for (int b = 0; b < mlstm_registry_count(); b++)
        if (strcasecmp(name, registry[b]->name) == 0)
            return create_on(registry[b], &cfg, out);
    for (size_t k = 0; k < sizeof known_backends / sizeof known_backends[0]; k++)
        if (strcasecmp(name, known_backends[k]) == 0) {
            mlstm_set_global_error("backend '%s' is not compiled into this library (compiled: %s)", name, compiled);
            return MLSTM_ERR_BACKEND_UNAVAILABLE;
        }
    mlstm_set_global_error("unknown backend '%s' (valid: auto, cuda, opencl; compiled: %s)", name, compiled);
    return MLSTM_ERR_BACKEND_UNAVAILABLE;
}

void mlstm_context_destroy(mlstm_context *ctx)
{
    if (ctx == NULL || ctx->magic != MLSTM_CONTEXT_MAGIC)
        return;
    if (ctx->ops->synchronize)
        ctx->ops->synchronize(ctx->impl);
    while (ctx->plans)
        mlstm_plan_destroy(ctx->plans);
    while (ctx->buffers)
        mlstm_buffer_destroy(ctx->buffers);
    ctx->ops->destroy(ctx->impl);
    ctx->magic = 0;
    free(ctx);
}

const char *mlstm_context_backend_name(const mlstm_context *ctx)
{
    return mlstm_check_context(ctx) == MLSTM_OK ? ctx->ops->name : "";
}

const char *mlstm_context_device_name(const mlstm_context *ctx)
{
    if (mlstm_check_context(ctx) != MLSTM_OK)
        return "";
    const char *s = ctx->ops->device_name(ctx->impl);
    return s ? s : "";
}

const char *mlstm_context_last_kernels(const mlstm_context *ctx)
{
    if (mlstm_check_context(ctx) != MLSTM_OK || ctx->ops->last_kernels == NULL)
        return "";
    const char *s = ctx->ops->last_kernels(ctx->impl);
    return s ? s : "";
}

const char *mlstm_context_last_error(const mlstm_context *ctx)
{
    return mlstm_check_context(ctx) == MLSTM_OK ? ctx->last_error : "";
}

int mlstm_synchronize(mlstm_context *ctx)
{
    if (mlstm_check_context(ctx) != MLSTM_OK)
        return MLSTM_ERR_INVALID_ARGUMENT;
    int st = ctx->ops->synchronize(ctx->impl);
    return st == MLSTM_OK ? MLSTM_OK : mlstm_fail_backend(ctx, st, "mlstm_synchronize");
}
