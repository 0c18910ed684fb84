/* The only file of libmlstm that reads the environment: MLSTM_BACKEND, MLSTM_DEVICE,
 * MLSTM_OPENCL_PLATFORM, MLSTM_OPENCL_KERNEL_DIR, MLSTM_ALGO, the tuning switches MLSTM_CUDA_SMALL_TILES,
 * MLSTM_CUDA_F32_TC, MLSTM_CUDA_WGMMA and MLSTM_CUDA_D512, and MLSTM_CUDA_FORCE (tests). Values are read at context creation (the
 * callers are in registry.c), never cached. */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

const char *mlstm_env_string(const char *name)
{
    const char *v = getenv(name);
    return (v && v[0]) ? v : NULL;
}

int mlstm_env_index(const char *name, int *value)
{
    const char *v = mlstm_env_string(name);
    *value = -1;
    if (v == NULL)
        return MLSTM_OK;
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    while (end && isspace((unsigned char)*end))
        end++;
    if (errno != 0 || end == v || (end && *end) || x < 0 || x > 1000000)
        return MLSTM_ERR_INVALID_ARGUMENT;
    *value = (int)x;
    return MLSTM_OK;
}

int mlstm_env_tristate(const char *name)
{
    const char *v = mlstm_env_string(name);
    if (v == NULL)
        return -2;
    if (!strcmp(v, "0"))
        return 0;
    if (!strcmp(v, "1"))
        return 1;
    if (!strcmp(v, "auto"))
        return -1;
    return -2;
}

int mlstm_env_algo(void)
{
    const char *v = mlstm_env_string("MLSTM_ALGO");
    if (v == NULL || !strcmp(v, "auto"))
        return MLSTM_ALGO_AUTO;
    if (!strcmp(v, "fused"))
        return MLSTM_ALGO_FUSED;
    if (!strcmp(v, "materialized") || !strcmp(v, "materialised"))
        return MLSTM_ALGO_MATERIALIZED;
    return -1;
}
