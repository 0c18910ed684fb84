/* Static texts of the status codes, the version string, dtype sizes and error recording for the API
 * core. The library never prints: details go into the context (or the thread's global error). */
#include <stdio.h>
#include <string.h>
#include "internal.h"

const char *mlstm_status_string(int status)
{
    switch (status) {
    case MLSTM_OK:                      return "success";
    case MLSTM_ERR_INVALID_ARGUMENT:    return "invalid argument";
    case MLSTM_ERR_UNSUPPORTED:         return "valid request not supported by this backend";
    case MLSTM_ERR_BACKEND_UNAVAILABLE: return "backend unknown or not compiled into this library";
    case MLSTM_ERR_NO_DEVICE:           return "no usable device for the backend";
    case MLSTM_ERR_OUT_OF_MEMORY:       return "out of memory";
    case MLSTM_ERR_KERNEL_BUILD:        return "kernel build failed (see the context's last error for the log)";
    case MLSTM_ERR_LAUNCH:              return "kernel launch failed";
    case MLSTM_ERR_DEVICE:              return "device or driver error";
    case MLSTM_ERR_INTERNAL:            return "internal error in libmlstm";
    case MLSTM_ERR_BUFFER_TOO_SMALL:    return "buffer too small for the tensor's shape and layout";
    case MLSTM_ERR_DTYPE_MISMATCH:      return "buffer dtype does not match the tensor's dtype";
    case MLSTM_ERR_SIZE_OVERFLOW:       return "sizes overflow 64-bit element or byte counts";
    case MLSTM_ERR_BAD_LAYOUT:          return "invalid layout: negative strides or overlapping outputs";
    case MLSTM_ERR_CONTEXT_MISMATCH:    return "buffer belongs to another context";
    default:                            return "unknown status code";
    }
}

const char *mlstm_version(void)
{
#define MLSTM_STR2(x) #x
#define MLSTM_STR(x) MLSTM_STR2(x)
    return MLSTM_STR(MLSTM_VERSION_MAJOR) "." MLSTM_STR(MLSTM_VERSION_MINOR) "." MLSTM_STR(MLSTM_VERSION_PATCH);
}

size_t mlstm_dtype_size(int dtype)
{
    switch (dtype) {
    case MLSTM_DTYPE_F32:  return 4;
    case MLSTM_DTYPE_F16:  return 2;
    case MLSTM_DTYPE_BF16: return 2;
    default:               return 0;
    }
}

static _Thread_local char global_error[MLSTM_ERRMSG_MAX];

void mlstm_set_global_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(global_error, sizeof global_error, fmt, ap);
    va_end(ap);
}

const char *mlstm_last_error_global(void) { return global_error; }

int mlstm_fail(mlstm_context *ctx, int status, const char *fmt, ...)
{
    if (ctx == NULL || mlstm_check_context(ctx) != MLSTM_OK)
        return status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->last_error, sizeof ctx->last_error, fmt, ap);
    va_end(ap);
    return status;
}

int mlstm_fail_backend(mlstm_context *ctx, int status, const char *where)
{
    const char *detail = ctx->ops->last_error ? ctx->ops->last_error(ctx->impl) : "";
    return mlstm_fail(ctx, status, "%s: %s%s%s", where, mlstm_status_string(status),
                      detail && detail[0] ? ": " : "", detail ? detail : "");
}
