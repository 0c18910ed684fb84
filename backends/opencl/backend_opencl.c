/* OpenCL backend: platform and device choice, context and in-order queue, buffers, and the launches of the
 * forward kernel and the four backward kernels (kernels_cl/); the materialised algorithm is materialized_cl.c. Exports mlstm_backend_opencl_ops only.
 * Every CL error becomes an mlstm_status with a readable detail kept for last_error; it never prints,
 * aborts or exits. */
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cl_internal.h"
#include "backend_opencl.h"

#define MLSTM_CL_PLATFORM_NOT_FOUND_KHR (-1001) /* the ICD loader's "no platform" (cl_khr_icd) */

const char *mlstm_cl_error_name(cl_int err)
{
    switch (err) {
#define E(x) case x: return #x;
    E(CL_SUCCESS) E(CL_DEVICE_NOT_FOUND) E(CL_DEVICE_NOT_AVAILABLE) E(CL_COMPILER_NOT_AVAILABLE)
    E(CL_MEM_OBJECT_ALLOCATION_FAILURE) E(CL_OUT_OF_RESOURCES) E(CL_OUT_OF_HOST_MEMORY)
    E(CL_PROFILING_INFO_NOT_AVAILABLE) E(CL_MEM_COPY_OVERLAP) E(CL_IMAGE_FORMAT_MISMATCH)
    E(CL_IMAGE_FORMAT_NOT_SUPPORTED) E(CL_BUILD_PROGRAM_FAILURE) E(CL_MAP_FAILURE)
    E(CL_MISALIGNED_SUB_BUFFER_OFFSET) E(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST)
    E(CL_COMPILE_PROGRAM_FAILURE) E(CL_LINKER_NOT_AVAILABLE) E(CL_LINK_PROGRAM_FAILURE)
    E(CL_DEVICE_PARTITION_FAILED) E(CL_KERNEL_ARG_INFO_NOT_AVAILABLE)
    E(CL_INVALID_VALUE) E(CL_INVALID_DEVICE_TYPE) E(CL_INVALID_PLATFORM) E(CL_INVALID_DEVICE)
    E(CL_INVALID_CONTEXT) E(CL_INVALID_QUEUE_PROPERTIES) E(CL_INVALID_COMMAND_QUEUE) E(CL_INVALID_HOST_PTR)
    E(CL_INVALID_MEM_OBJECT) E(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR) E(CL_INVALID_IMAGE_SIZE) E(CL_INVALID_SAMPLER)
    E(CL_INVALID_BINARY) E(CL_INVALID_BUILD_OPTIONS) E(CL_INVALID_PROGRAM) E(CL_INVALID_PROGRAM_EXECUTABLE)
    E(CL_INVALID_KERNEL_NAME) E(CL_INVALID_KERNEL_DEFINITION) E(CL_INVALID_KERNEL) E(CL_INVALID_ARG_INDEX)
    E(CL_INVALID_ARG_VALUE) E(CL_INVALID_ARG_SIZE) E(CL_INVALID_KERNEL_ARGS) E(CL_INVALID_WORK_DIMENSION)
    E(CL_INVALID_WORK_GROUP_SIZE) E(CL_INVALID_WORK_ITEM_SIZE) E(CL_INVALID_GLOBAL_OFFSET)
    E(CL_INVALID_EVENT_WAIT_LIST) E(CL_INVALID_EVENT) E(CL_INVALID_OPERATION) E(CL_INVALID_GL_OBJECT)
    E(CL_INVALID_BUFFER_SIZE) E(CL_INVALID_MIP_LEVEL) E(CL_INVALID_GLOBAL_WORK_SIZE) E(CL_INVALID_PROPERTY)
    E(CL_INVALID_IMAGE_DESCRIPTOR) E(CL_INVALID_COMPILER_OPTIONS) E(CL_INVALID_LINKER_OPTIONS)
    E(CL_INVALID_DEVICE_PARTITION_COUNT)
#undef E
    case MLSTM_CL_PLATFORM_NOT_FOUND_KHR: return "CL_PLATFORM_NOT_FOUND_KHR";
    default: return "unknown OpenCL error";
    }
}

int mlstm_cl_status(cl_int err)
{
    switch (err) {
    case CL_SUCCESS: return MLSTM_OK;
    case CL_MEM_OBJECT_ALLOCATION_FAILURE:
    case CL_OUT_OF_HOST_MEMORY:
    case CL_INVALID_BUFFER_SIZE: return MLSTM_ERR_OUT_OF_MEMORY;
    case CL_BUILD_PROGRAM_FAILURE:
    case CL_COMPILER_NOT_AVAILABLE:
    case CL_INVALID_BUILD_OPTIONS: return MLSTM_ERR_KERNEL_BUILD;
    default: return MLSTM_ERR_DEVICE;
    }
}

/* Status of a failed enqueue of a kernel. */
static int launch_status(cl_int err)
{
    const int st = mlstm_cl_status(err);
    return st == MLSTM_ERR_OUT_OF_MEMORY ? st : MLSTM_ERR_LAUNCH;
}

int mlstm_cl_fail(mlstm_cl_ctx *cx, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const int need = vsnprintf(cx->error, cx->error_cap, fmt, ap);
    va_end(ap);
    if (need >= 0 && (size_t)need >= cx->error_cap) { /* long build logs: grow once, keep the prefix otherwise */
        char *bigger = realloc(cx->error, (size_t)need + 1);
        if (bigger) {
            cx->error = bigger;
            cx->error_cap = (size_t)need + 1;
            va_start(ap, fmt);
            vsnprintf(cx->error, cx->error_cap, fmt, ap);
            va_end(ap);
        }
    }
    return status;
}

/* ---- device discovery ---- */

static int list_platforms(cl_platform_id **out, cl_uint *n, char *msg, size_t msg_len)
{
    *out = NULL;
    *n = 0;
    cl_int err = clGetPlatformIDs(0, NULL, n);
    if (err == MLSTM_CL_PLATFORM_NOT_FOUND_KHR || (err == CL_SUCCESS && *n == 0)) {
        *n = 0;
        snprintf(msg, msg_len, "no OpenCL platform found (no ICD installed?)");
        return MLSTM_OK;
    }
    if (err != CL_SUCCESS) {
        snprintf(msg, msg_len, "clGetPlatformIDs failed: %s (%d)", mlstm_cl_error_name(err), err);
        return MLSTM_ERR_DEVICE;
    }
    *out = malloc(sizeof **out * *n);
    if (!*out) {
        snprintf(msg, msg_len, "out of host memory");
        return MLSTM_ERR_OUT_OF_MEMORY;
    }
    err = clGetPlatformIDs(*n, *out, NULL);
    if (err != CL_SUCCESS) {
        free(*out);
        *out = NULL;
        snprintf(msg, msg_len, "clGetPlatformIDs failed: %s (%d)", mlstm_cl_error_name(err), err);
        return MLSTM_ERR_DEVICE;
    }
    return MLSTM_OK;
}

static cl_uint device_count(cl_platform_id p)
{
    cl_uint n = 0;
    return clGetDeviceIDs(p, CL_DEVICE_TYPE_ALL, 0, NULL, &n) == CL_SUCCESS ? n : 0;
}

static int cl_probe(int *n_devices, char *msg, size_t msg_len)
{
    cl_platform_id *plat;
    cl_uint np;
    *n_devices = 0;
    const int st = list_platforms(&plat, &np, msg, msg_len);
    if (st != MLSTM_OK || np == 0)
        return st;
    cl_uint total = 0;
    for (cl_uint i = 0; i < np; ++i)
        total += device_count(plat[i]);
    free(plat);
    *n_devices = total > INT_MAX ? INT_MAX : (int)total;
    if (total == 0)
        snprintf(msg, msg_len, "no OpenCL device found on %u platform(s)", np);
    return MLSTM_OK;
}

/* A zeroed backend state for one device, with its error text. */
static int new_ctx(cl_platform_id platform, cl_device_id device, const char *kernel_dir, mlstm_cl_ctx **out,
                   char *msg, size_t msg_len)
{
    mlstm_cl_ctx *cx = calloc(1, sizeof *cx);
    char *ebuf = malloc(1024);
    if (!cx || !ebuf) {
        free(cx);
        free(ebuf);
        snprintf(msg, msg_len, "out of host memory");
        return MLSTM_ERR_OUT_OF_MEMORY;
    }
    cx->platform = platform;
    cx->device = device;
    snprintf(cx->kernel_dir, sizeof cx->kernel_dir, "%s", kernel_dir);
    cx->error = ebuf;
    cx->error[0] = '\0';
    cx->error_cap = 1024;
    *out = cx;
    return MLSTM_OK;
}

/* Releases what a state holds (programs, queue, context, the device retain) and frees it. */
static void free_ctx(mlstm_cl_ctx *cx)
{
    mlstm_cl_mat_release(cx);
    mlstm_cl_release_programs(cx);
    if (cx->queue)
        clReleaseCommandQueue(cx->queue);
    if (cx->context)
        clReleaseContext(cx->context);
    if (cx->retained_device)
        clReleaseDevice(cx->device);
    free(cx->error);
    free(cx);
}

/* Reads the device's limits and name into cx; MLSTM_OK, or a status with the detail in msg. */
static int read_device(mlstm_cl_ctx *cx, const char *label, char *msg, size_t msg_len)
{
    const cl_device_id device = cx->device;
    cl_bool available = CL_FALSE, compiler = CL_FALSE;
    cl_int err = clGetDeviceInfo(device, CL_DEVICE_AVAILABLE, sizeof available, &available, NULL);
    if (err == CL_SUCCESS)
        err = clGetDeviceInfo(device, CL_DEVICE_COMPILER_AVAILABLE, sizeof compiler, &compiler, NULL);
    if (err == CL_SUCCESS)
        err = clGetDeviceInfo(device, CL_DEVICE_LOCAL_MEM_SIZE, sizeof cx->local_mem, &cx->local_mem, NULL);
    if (err == CL_SUCCESS)
        err = clGetDeviceInfo(device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof cx->max_alloc, &cx->max_alloc, NULL);
    if (err == CL_SUCCESS)
        err = clGetDeviceInfo(device, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof cx->max_wg, &cx->max_wg, NULL);
    if (err == CL_SUCCESS)
        err = clGetDeviceInfo(device, CL_DEVICE_ADDRESS_BITS, sizeof cx->address_bits, &cx->address_bits, NULL);
    if (err == CL_SUCCESS)
        err = clGetDeviceInfo(device, CL_DEVICE_NAME, sizeof cx->device_name - 1, cx->device_name, NULL);
    cl_device_type type = 0;
    if (err == CL_SUCCESS)
        err = clGetDeviceInfo(device, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    cx->generic_dims = (type & CL_DEVICE_TYPE_CPU) != 0;
    if (err != CL_SUCCESS) {
        snprintf(msg, msg_len, "clGetDeviceInfo failed: %s (%d)", mlstm_cl_error_name(err), err);
        return MLSTM_ERR_DEVICE;
    }
    if (!available || !compiler) {
        snprintf(msg, msg_len, "%s (%s) is %s", label, cx->device_name,
                 !available ? "not available" : "without an OpenCL C compiler");
        return MLSTM_ERR_NO_DEVICE;
    }
    return MLSTM_OK;
}

static int cl_init(const mlstm_backend_config *cfg, void **impl, char *msg, size_t msg_len)
{
    cl_platform_id *plat;
    cl_uint np;
    *impl = NULL;
    int st = list_platforms(&plat, &np, msg, msg_len);
    if (st != MLSTM_OK)
        return st;
    if (np == 0)
        return MLSTM_ERR_NO_DEVICE;
    int pi = cfg->opencl_platform;
    if (pi >= (int)np) {
        snprintf(msg, msg_len, "OpenCL platform index %d out of range: %u platform(s) found", pi, np);
        free(plat);
        return MLSTM_ERR_NO_DEVICE;
    }
    if (pi < 0) /* the first platform that has a device */
        for (pi = 0; pi < (int)np && device_count(plat[pi]) == 0; ++pi) {}
    if (pi >= (int)np) {
        snprintf(msg, msg_len, "no OpenCL device found on %u platform(s)", np);
        free(plat);
        return MLSTM_ERR_NO_DEVICE;
    }
    const cl_platform_id platform = plat[pi];
    free(plat);

    char pname[128] = "";
    clGetPlatformInfo(platform, CL_PLATFORM_NAME, sizeof pname - 1, pname, NULL);
    const cl_uint nd = device_count(platform);
    if (cfg->device < 0 || (cl_uint)cfg->device >= nd) {
        snprintf(msg, msg_len, "OpenCL device index %d out of range: platform %d (%s) has %u device(s)", cfg->device,
                 pi, pname, nd);
        return MLSTM_ERR_NO_DEVICE;
    }
    cl_device_id *devs = malloc(sizeof *devs * nd);
    if (!devs) {
        snprintf(msg, msg_len, "out of host memory");
        return MLSTM_ERR_OUT_OF_MEMORY;
    }
    cl_int err = clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, nd, devs, NULL);
    const cl_device_id device = devs[cfg->device];
    free(devs);
    if (err != CL_SUCCESS) {
        snprintf(msg, msg_len, "clGetDeviceIDs failed: %s (%d)", mlstm_cl_error_name(err), err);
        return MLSTM_ERR_DEVICE;
    }

    mlstm_cl_ctx *cx = NULL;
    st = new_ctx(platform, device, cfg->opencl_kernel_dir, &cx, msg, msg_len);
    if (st != MLSTM_OK)
        return st;
    char label[160];
    snprintf(label, sizeof label, "OpenCL device %d of platform %d", cfg->device, pi);
    st = read_device(cx, label, msg, msg_len);
    if (st == MLSTM_OK) {
        const cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)platform, 0};
        cx->context = clCreateContext(props, 1, &device, NULL, NULL, &err);
        if (err == CL_SUCCESS)
            cx->queue = clCreateCommandQueue(cx->context, device, 0, &err);
        if (err != CL_SUCCESS) {
            snprintf(msg, msg_len, "%s failed: %s (%d)", cx->context ? "clCreateCommandQueue" : "clCreateContext",
                     mlstm_cl_error_name(err), err);
            st = mlstm_cl_status(err) == MLSTM_ERR_OUT_OF_MEMORY ? MLSTM_ERR_OUT_OF_MEMORY : MLSTM_ERR_DEVICE;
        }
    }
    if (st != MLSTM_OK) {
        free_ctx(cx);
        return st;
    }
    *impl = cx;
    return MLSTM_OK;
}

/* ---- a context on the caller's OpenCL objects (backend_opencl.h) ---- */

int mlstm_opencl_init_external(void *context, void *device, void *queue, const char *kernel_dir, void **impl,
                               char *msg, size_t msg_len)
{
    const cl_context c = (cl_context)context;
    const cl_device_id d = (cl_device_id)device;
    const cl_command_queue q = (cl_command_queue)queue;
    *impl = NULL;
    size_t bytes = 0;
    cl_int err = clGetContextInfo(c, CL_CONTEXT_DEVICES, 0, NULL, &bytes);
    cl_device_id *devs = err == CL_SUCCESS && bytes ? malloc(bytes) : NULL;
    if (devs)
        err = clGetContextInfo(c, CL_CONTEXT_DEVICES, bytes, devs, NULL);
    int found = 0;
    for (size_t i = 0; devs && err == CL_SUCCESS && i < bytes / sizeof *devs; ++i)
        found |= devs[i] == d;
    free(devs);
    if (err != CL_SUCCESS || !found) {
        if (err != CL_SUCCESS)
            snprintf(msg, msg_len, "clGetContextInfo(CL_CONTEXT_DEVICES) failed: %s (%d): not a valid cl_context",
                     mlstm_cl_error_name(err), err);
        else
            snprintf(msg, msg_len, "the cl_device_id is not a device of the cl_context");
        return err == CL_OUT_OF_HOST_MEMORY ? MLSTM_ERR_OUT_OF_MEMORY : MLSTM_ERR_INVALID_ARGUMENT;
    }
    if (q) {
        cl_context qc = NULL;
        cl_device_id qd = NULL;
        cl_command_queue_properties props = 0;
        err = clGetCommandQueueInfo(q, CL_QUEUE_CONTEXT, sizeof qc, &qc, NULL);
        if (err == CL_SUCCESS)
            err = clGetCommandQueueInfo(q, CL_QUEUE_DEVICE, sizeof qd, &qd, NULL);
        if (err == CL_SUCCESS)
            err = clGetCommandQueueInfo(q, CL_QUEUE_PROPERTIES, sizeof props, &props, NULL);
        if (err != CL_SUCCESS || qc != c || qd != d || (props & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE)) {
            snprintf(msg, msg_len, "the cl_command_queue %s",
                     err != CL_SUCCESS ? "is not a valid command queue"
                     : qc != c         ? "belongs to another cl_context"
                     : qd != d         ? "belongs to another device of the context"
                                       : "is out of order (the backward's kernels rely on an in-order queue)");
            return MLSTM_ERR_INVALID_ARGUMENT;
        }
    }
    cl_platform_id platform = NULL;
    err = clGetDeviceInfo(d, CL_DEVICE_PLATFORM, sizeof platform, &platform, NULL);
    if (err != CL_SUCCESS) {
        snprintf(msg, msg_len, "clGetDeviceInfo(CL_DEVICE_PLATFORM) failed: %s (%d)", mlstm_cl_error_name(err), err);
        return MLSTM_ERR_INVALID_ARGUMENT;
    }
    mlstm_cl_ctx *cx = NULL;
    int st = new_ctx(platform, d, kernel_dir ? kernel_dir : "", &cx, msg, msg_len);
    if (st != MLSTM_OK)
        return st;
    st = read_device(cx, "the caller's OpenCL device", msg, msg_len);
    if (st == MLSTM_OK) {
        /* the retains taken here are the ones cl_destroy releases; the caller keeps its own references */
        clRetainContext(c);
        cx->context = c;
        clRetainDevice(d);
        cx->retained_device = 1;
        if (q) {
            clRetainCommandQueue(q);
            cx->queue = q;
        } else {
            cx->queue = clCreateCommandQueue(c, d, 0, &err);
            if (err != CL_SUCCESS) {
                snprintf(msg, msg_len, "clCreateCommandQueue failed: %s (%d)", mlstm_cl_error_name(err), err);
                st = mlstm_cl_status(err) == MLSTM_ERR_OUT_OF_MEMORY ? MLSTM_ERR_OUT_OF_MEMORY : MLSTM_ERR_DEVICE;
            }
        }
    }
    if (st != MLSTM_OK) {
        free_ctx(cx);
        return st;
    }
    *impl = cx;
    return MLSTM_OK;
}

void mlstm_opencl_handles(void *impl, void **context, void **device, void **queue)
{
    const mlstm_cl_ctx *cx = impl;
    if (context)
        *context = cx->context;
    if (device)
        *device = cx->device;
    if (queue)
        *queue = cx->queue;
}

int mlstm_opencl_check_mem(void *impl, void *mem, size_t bytes)
{
    mlstm_cl_ctx *cx = impl;
#if !defined(__APPLE__)
    /* cl_khr_icd: every object of an ICD platform begins with its platform's dispatch table pointer. A host block
     * passed as a cl_mem fails this comparison before an OpenCL call dereferences it (through the ICD loader,
     * which would crash on it). */
    void *dispatch_mem = NULL, *dispatch_ctx = NULL;
    memcpy(&dispatch_mem, mem, sizeof dispatch_mem);
    memcpy(&dispatch_ctx, cx->context, sizeof dispatch_ctx);
    if (dispatch_mem != dispatch_ctx)
        return mlstm_cl_fail(cx, MLSTM_ERR_INVALID_ARGUMENT,
                             "%p is not an OpenCL object of the context's platform (a host pointer?)", mem);
#endif
    cl_context owner = NULL;
    cl_mem_object_type type = 0;
    size_t size = 0;
    cl_int err = clGetMemObjectInfo((cl_mem)mem, CL_MEM_CONTEXT, sizeof owner, &owner, NULL);
    if (err == CL_SUCCESS)
        err = clGetMemObjectInfo((cl_mem)mem, CL_MEM_TYPE, sizeof type, &type, NULL);
    if (err == CL_SUCCESS)
        err = clGetMemObjectInfo((cl_mem)mem, CL_MEM_SIZE, sizeof size, &size, NULL);
    if (err != CL_SUCCESS)
        return mlstm_cl_fail(cx, MLSTM_ERR_INVALID_ARGUMENT, "clGetMemObjectInfo(%p) failed: %s (%d): not a cl_mem",
                             mem, mlstm_cl_error_name(err), err);
    if (owner != cx->context)
        return mlstm_cl_fail(cx, MLSTM_ERR_CONTEXT_MISMATCH, "cl_mem %p belongs to another cl_context", mem);
    if (type != CL_MEM_OBJECT_BUFFER)
        return mlstm_cl_fail(cx, MLSTM_ERR_INVALID_ARGUMENT, "cl_mem %p is not a buffer object (type 0x%x)", mem,
                             (unsigned)type);
    if (size < bytes)
        return mlstm_cl_fail(cx, MLSTM_ERR_BUFFER_TOO_SMALL, "cl_mem %p holds %zu bytes, the buffer needs %zu", mem,
                             size, bytes);
    return MLSTM_OK;
}

static void cl_destroy(void *impl)
{
    mlstm_cl_ctx *cx = impl;
    if (!cx)
        return;
    clFinish(cx->queue);
    free_ctx(cx);
}

static const char *cl_device_name(void *impl) { return ((mlstm_cl_ctx *)impl)->device_name; }

static const char *cl_last_error(void *impl) { return ((mlstm_cl_ctx *)impl)->error; }

static int cl_synchronize(void *impl)
{
    mlstm_cl_ctx *cx = impl;
    const cl_int err = clFinish(cx->queue);
    return err == CL_SUCCESS ? MLSTM_OK
                             : mlstm_cl_fail(cx, mlstm_cl_status(err), "clFinish failed: %s (%d)",
                                             mlstm_cl_error_name(err), err);
}

/* ---- buffers ---- */

static int cl_buffer_alloc(void *impl, size_t bytes, void **mem)
{
    mlstm_cl_ctx *cx = impl;
    *mem = NULL;
    if (bytes == 0)
        bytes = 1; /* OpenCL has no empty buffers */
    if ((cl_ulong)bytes > cx->max_alloc)
        return mlstm_cl_fail(cx, MLSTM_ERR_OUT_OF_MEMORY,
                             "buffer of %zu bytes exceeds the device's CL_DEVICE_MAX_MEM_ALLOC_SIZE (%llu bytes)", bytes,
                             (unsigned long long)cx->max_alloc);
    cl_int err;
    cl_mem m = clCreateBuffer(cx->context, CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (err != CL_SUCCESS)
        return mlstm_cl_fail(cx, MLSTM_ERR_OUT_OF_MEMORY, "clCreateBuffer(%zu bytes) failed: %s (%d)", bytes,
                             mlstm_cl_error_name(err), err);
    /* Some drivers allocate lazily: touch the buffer now so that a failure shows here, not in a kernel. */
    const cl_uchar zero = 0;
    err = clEnqueueFillBuffer(cx->queue, m, &zero, 1, 0, 1, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clFinish(cx->queue);
    if (err != CL_SUCCESS) {
        clReleaseMemObject(m);
        return mlstm_cl_fail(cx, MLSTM_ERR_OUT_OF_MEMORY, "allocating a buffer of %zu bytes failed: %s (%d)", bytes,
                             mlstm_cl_error_name(err), err);
    }
    *mem = m;
    return MLSTM_OK;
}

static void cl_buffer_free(void *impl, void *mem)
{
    (void)impl;
    if (mem)
        clReleaseMemObject((cl_mem)mem);
}

static int cl_buffer_write(void *impl, void *mem, size_t offset, size_t bytes, const void *src)
{
    mlstm_cl_ctx *cx = impl;
    if (bytes == 0)
        return MLSTM_OK;
    const cl_int err = clEnqueueWriteBuffer(cx->queue, (cl_mem)mem, CL_TRUE, offset, bytes, src, 0, NULL, NULL);
    return err == CL_SUCCESS ? MLSTM_OK
                             : mlstm_cl_fail(cx, mlstm_cl_status(err), "clEnqueueWriteBuffer(%zu bytes at %zu) failed: %s (%d)",
                                             bytes, offset, mlstm_cl_error_name(err), err);
}

static int cl_buffer_read(void *impl, void *mem, size_t offset, size_t bytes, void *dst)
{
    mlstm_cl_ctx *cx = impl;
    if (bytes == 0)
        return MLSTM_OK;
    const cl_int err = clEnqueueReadBuffer(cx->queue, (cl_mem)mem, CL_TRUE, offset, bytes, dst, 0, NULL, NULL);
    return err == CL_SUCCESS ? MLSTM_OK
                             : mlstm_cl_fail(cx, mlstm_cl_status(err), "clEnqueueReadBuffer(%zu bytes at %zu) failed: %s (%d)",
                                             bytes, offset, mlstm_cl_error_name(err), err);
}

/* ---- launches ---- */

static int cl_supports(void *impl, const mlstm_params *p, int backward)
{
    mlstm_cl_ctx *cx = impl;
    (void)backward;
    if (p->seq_len > INT_MAX - 1024) /* kernels index positions with int */
        return mlstm_cl_fail(cx, MLSTM_ERR_UNSUPPORTED, "seq_len %lld exceeds the OpenCL backend's limit of %d",
                             (long long)p->seq_len, INT_MAX - 1024);
    for (int i = 0; i < MLSTM_TENSOR_COUNT; ++i)
        if (p->t[i].offset > (uint64_t)INT64_MAX)
            return mlstm_cl_fail(cx, MLSTM_ERR_UNSUPPORTED, "element offset %llu does not fit the kernels' 64-bit index",
                                 (unsigned long long)p->t[i].offset);
    return MLSTM_OK;
}

/* Kernel arguments, set in order; the first failure is kept. */
typedef struct {
    cl_kernel kernel;
    cl_uint index;
    cl_int err;
} arglist;

static void arg(arglist *a, size_t size, const void *value)
{
    if (a->err == CL_SUCCESS)
        a->err = clSetKernelArg(a->kernel, a->index, size, value);
    a->index++;
}

/* A tensor: its cl_mem, then long4 (offset, stride_b, stride_h, stride_s) in elements. */
static void arg_tensor(arglist *a, const mlstm_tensor_arg *t)
{
    const cl_mem m = (cl_mem)t->mem;
    cl_long4 L;
    L.s[0] = (cl_long)t->offset;
    L.s[1] = t->stride_b;
    L.s[2] = t->stride_h;
    L.s[3] = t->stride_s;
    arg(a, sizeof m, &m);
    arg(a, sizeof L, &L);
}

/* Global size groups * local as size_t, or 0 when it does not fit the device's index range. */
static size_t global_size(const mlstm_cl_ctx *cx, uint64_t groups, size_t local)
{
    const uint64_t limit = cx->address_bits >= 64 ? (uint64_t)SIZE_MAX : (uint64_t)UINT32_MAX;
    if (groups == 0 || groups > limit / local)
        return 0;
    return (size_t)(groups * local);
}

static int enqueue(mlstm_cl_ctx *cx, const mlstm_cl_program *pr, int which, const arglist *a, uint64_t groups,
                   size_t local)
{
    const char *name = pr->names[which];
    if (a->err != CL_SUCCESS)
        return mlstm_cl_fail(cx, MLSTM_ERR_LAUNCH, "clSetKernelArg(%s, %u) failed: %s (%d)", name, a->index - 1,
                             mlstm_cl_error_name(a->err), a->err);
    const size_t global = global_size(cx, groups, local);
    if (global == 0)
        return mlstm_cl_fail(cx, MLSTM_ERR_UNSUPPORTED, "%s: %llu work-groups of %zu exceed the device's index range",
                             name, (unsigned long long)groups, local);
    const cl_int err = clEnqueueNDRangeKernel(cx->queue, pr->kernels[which], 1, NULL, &global, &local, 0, NULL, NULL);
    return err == CL_SUCCESS ? MLSTM_OK
                             : mlstm_cl_fail(cx, launch_status(err), "clEnqueueNDRangeKernel(%s) failed: %s (%d)", name,
                                             mlstm_cl_error_name(err), err);
}

/* ntiles * B * NH work-groups, or 0 on overflow. */
static uint64_t tile_groups(const mlstm_params *p, int block, int *ntiles)
{
    *ntiles = (int)((p->seq_len + block - 1) / block);
    const uint64_t bh = (uint64_t)p->batch * (uint64_t)p->heads;
    if (p->heads != 0 && bh / (uint64_t)p->heads != (uint64_t)p->batch)
        return 0;
    return bh > UINT64_MAX / (uint64_t)*ntiles ? 0 : bh * (uint64_t)*ntiles;
}

/* ---- plans: the programs of a problem, built once ---- */

typedef struct mlstm_cl_plan {
    const mlstm_cl_program *program[2]; /* by MLSTM_CL_FWD / MLSTM_CL_BWD; NULL for a direction not planned */
} mlstm_cl_plan;

/* The program of a call: the plan's, else from the context's cache (built on first use). */
static int call_program(mlstm_cl_ctx *cx, int direction, const mlstm_params *p, const mlstm_cl_program **out)
{
    const mlstm_cl_plan *plan = p->plan;
    if (plan && plan->program[direction]) {
        *out = plan->program[direction];
        return MLSTM_OK;
    }
    return mlstm_cl_get_program(cx, direction, p, out);
}

static int cl_plan_create(void *impl, const mlstm_params *p, unsigned directions, void **out, size_t *workspace_bytes)
{
    mlstm_cl_ctx *cx = impl;
    *out = NULL;
    *workspace_bytes = 0; /* the fused kernels need no scratch memory */
    mlstm_cl_plan *plan = calloc(1, sizeof *plan);
    if (!plan)
        return mlstm_cl_fail(cx, MLSTM_ERR_OUT_OF_MEMORY, "out of host memory");
    for (int dir = MLSTM_CL_FWD; dir <= MLSTM_CL_BWD; ++dir) {
        if (!(directions & (dir == MLSTM_CL_FWD ? MLSTM_PLAN_FWD : MLSTM_PLAN_BWD)))
            continue;
        if (p->plan_algo[dir == MLSTM_CL_BWD] == MLSTM_ALGO_MATERIALIZED) { /* its program now; CLBlast's own
                                                                             * kernels compile at its first call */
            const int st = mlstm_cl_mat_build(cx, p->dtype);
            if (st != MLSTM_OK) {
                free(plan);
                return st;
            }
            continue;
        }
        int ntiles;
        int st = mlstm_cl_get_program(cx, dir, p, &plan->program[dir]);
        if (st == MLSTM_OK && global_size(cx, tile_groups(p, plan->program[dir]->tiles.block, &ntiles),
                                          (size_t)plan->program[dir]->tiles.rows * plan->program[dir]->tiles.cols) == 0)
            st = mlstm_cl_fail(cx, MLSTM_ERR_UNSUPPORTED, "%lld x %lld x %lld positions need more work-groups than "
                               "the device's index range holds", (long long)p->batch, (long long)p->heads,
                               (long long)p->seq_len);
        if (st != MLSTM_OK) {
            free(plan);
            return st;
        }
    }
    *out = plan;
    return MLSTM_OK;
}

/* The programs belong to the context's cache; the plan only points at them. */
static void cl_plan_destroy(void *impl, void *plan)
{
    (void)impl;
    free(plan);
}

static int cl_fwd(void *impl, const mlstm_params *p)
{
    mlstm_cl_ctx *cx = impl;
    const mlstm_cl_program *pr;
    int st = cl_supports(impl, p, 0);
    if (st == MLSTM_OK && p->algo == MLSTM_ALGO_MATERIALIZED)
        return mlstm_cl_mat_fwd(cx, p);
    if (st == MLSTM_OK)
        st = call_program(cx, MLSTM_CL_FWD, p, &pr);
    if (st != MLSTM_OK)
        return st;
    int ntiles;
    const uint64_t groups = tile_groups(p, pr->tiles.block, &ntiles);
    const cl_int S = (cl_int)p->seq_len, nt = ntiles, dqk = (cl_int)p->dqk, dv = (cl_int)p->dv;
    const cl_long NH = p->heads;
    arglist a = {pr->kernels[MLSTM_CL_K_FWD], 0, CL_SUCCESS};
    static const int order[] = {MLSTM_TENSOR_Q, MLSTM_TENSOR_K, MLSTM_TENSOR_V, MLSTM_TENSOR_I,
                                MLSTM_TENSOR_F, MLSTM_TENSOR_H, MLSTM_TENSOR_M, MLSTM_TENSOR_N};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; ++i)
        arg_tensor(&a, &p->t[order[i]]);
    arg(&a, sizeof S, &S);
    arg(&a, sizeof nt, &nt);
    arg(&a, sizeof NH, &NH);
    arg(&a, sizeof dqk, &dqk);
    arg(&a, sizeof dv, &dv);
    arg(&a, sizeof p->scale, &p->scale);
    arg(&a, sizeof p->eps, &p->eps);
    return enqueue(cx, pr, MLSTM_CL_K_FWD, &a, groups, (size_t)pr->tiles.rows * pr->tiles.cols);
}

/* Backward (kernels_cl/bwd.cl): (1) prep writes delta_t into df (exact mode), (2) dK/dV reads it and writes
 * dk, dv, di (and di's rounding error into dq), (3) dQ reads its rows' delta and that error, writes dq and
 * tile-local sums of dF into df, (4) gates finishes df. The in-order queue orders them. */
static int cl_bwd(void *impl, const mlstm_params *p)
{
    mlstm_cl_ctx *cx = impl;
    const mlstm_cl_program *pr;
    int st = cl_supports(impl, p, 1);
    if (st == MLSTM_OK && p->algo == MLSTM_ALGO_MATERIALIZED)
        return mlstm_cl_mat_bwd(cx, p);
    if (st == MLSTM_OK)
        st = call_program(cx, MLSTM_CL_BWD, p, &pr);
    if (st != MLSTM_OK)
        return st;
    int ntiles;
    const uint64_t groups = tile_groups(p, pr->tiles.block, &ntiles);
    const size_t nt_local = (size_t)pr->tiles.rows * pr->tiles.cols;
    const cl_int S = (cl_int)p->seq_len, nt = ntiles, dqk = (cl_int)p->dqk, dv = (cl_int)p->dv;
    const cl_int exact = p->grad_mode == MLSTM_GRAD_EXACT;
    const cl_long NH = p->heads;
    const mlstm_tensor_arg *t = p->t;

    if (exact) {
        const cl_long rows = (cl_long)(groups / (uint64_t)ntiles) * S; /* B * NH * S, fits: groups did */
        const size_t local = cx->max_wg < 64 ? cx->max_wg : 64;
        arglist a = {pr->kernels[MLSTM_CL_K_BWD_PREP], 0, CL_SUCCESS};
        arg_tensor(&a, &t[MLSTM_TENSOR_H]);
        arg_tensor(&a, &t[MLSTM_TENSOR_DH]);
        arg_tensor(&a, &t[MLSTM_TENSOR_M]);
        arg_tensor(&a, &t[MLSTM_TENSOR_N]);
        arg_tensor(&a, &t[MLSTM_TENSOR_DF]);
        arg(&a, sizeof S, &S);
        arg(&a, sizeof NH, &NH);
        arg(&a, sizeof rows, &rows);
        arg(&a, sizeof dv, &dv);
        st = enqueue(cx, pr, MLSTM_CL_K_BWD_PREP, &a, ((uint64_t)rows + local - 1) / local, local);
        if (st != MLSTM_OK)
            return st;
    }

    static const int dkdv_order[] = {MLSTM_TENSOR_Q, MLSTM_TENSOR_K, MLSTM_TENSOR_V, MLSTM_TENSOR_I,
                                     MLSTM_TENSOR_F, MLSTM_TENSOR_M, MLSTM_TENSOR_N, MLSTM_TENSOR_DH,
                                     MLSTM_TENSOR_DF, MLSTM_TENSOR_DK, MLSTM_TENSOR_DV, MLSTM_TENSOR_DI,
                                     MLSTM_TENSOR_DQ};
    static const int dq_order[] = {MLSTM_TENSOR_Q, MLSTM_TENSOR_K, MLSTM_TENSOR_V, MLSTM_TENSOR_I,
                                   MLSTM_TENSOR_F, MLSTM_TENSOR_M, MLSTM_TENSOR_N, MLSTM_TENSOR_DH,
                                   MLSTM_TENSOR_DF, MLSTM_TENSOR_DI, MLSTM_TENSOR_DQ};
    const struct { int kernel; const int *order; size_t n; } tile_kernels[] = {
        {MLSTM_CL_K_BWD_DKDV, dkdv_order, sizeof dkdv_order / sizeof dkdv_order[0]},
        {MLSTM_CL_K_BWD_DQ, dq_order, sizeof dq_order / sizeof dq_order[0]},
    };
    for (size_t k = 0; k < 2; ++k) {
        arglist a = {pr->kernels[tile_kernels[k].kernel], 0, CL_SUCCESS};
        for (size_t i = 0; i < tile_kernels[k].n; ++i)
            arg_tensor(&a, &t[tile_kernels[k].order[i]]);
        arg(&a, sizeof S, &S);
        arg(&a, sizeof nt, &nt);
        arg(&a, sizeof NH, &NH);
        arg(&a, sizeof dqk, &dqk);
        arg(&a, sizeof dv, &dv);
        arg(&a, sizeof exact, &exact);
        arg(&a, sizeof p->scale, &p->scale);
        arg(&a, sizeof p->eps, &p->eps);
        st = enqueue(cx, pr, tile_kernels[k].kernel, &a, groups, nt_local);
        if (st != MLSTM_OK)
            return st;
    }

    arglist a = {pr->kernels[MLSTM_CL_K_BWD_GATES], 0, CL_SUCCESS};
    arg_tensor(&a, &t[MLSTM_TENSOR_F]);
    arg_tensor(&a, &t[MLSTM_TENSOR_DF]);
    arg(&a, sizeof S, &S);
    arg(&a, sizeof nt, &nt);
    arg(&a, sizeof NH, &NH);
    return enqueue(cx, pr, MLSTM_CL_K_BWD_GATES, &a, groups / (uint64_t)ntiles, nt_local);
}

static int cl_workspace_size(void *impl, const mlstm_params *p, int backward, uint64_t *bytes)
{
    *bytes = 0;
    if (p->algo != MLSTM_ALGO_MATERIALIZED)
        return MLSTM_OK; /* the fused kernels stage nothing */
    return mlstm_cl_mat_workspace_size(impl, p, backward, bytes);
}

static int cl_device_is_cpu(void *impl)
{
    return ((const mlstm_cl_ctx *)impl)->generic_dims; /* set from CL_DEVICE_TYPE_CPU (cl_init) */
}

const mlstm_backend_ops mlstm_backend_opencl_ops = {
    /* .abi_version  = */ MLSTM_BACKEND_ABI_VERSION,
    /* .name         = */ "opencl",
    /* .probe        = */ cl_probe,
    /* .init         = */ cl_init,
    /* .destroy      = */ cl_destroy,
    /* .device_name  = */ cl_device_name,
    /* .buffer_alloc = */ cl_buffer_alloc,
    /* .buffer_free  = */ cl_buffer_free,
    /* .buffer_write = */ cl_buffer_write,
    /* .buffer_read  = */ cl_buffer_read,
    /* .supports     = */ cl_supports,
    /* .fwd          = */ cl_fwd,
    /* .bwd          = */ cl_bwd,
    /* .synchronize  = */ cl_synchronize,
    /* .last_error   = */ cl_last_error,
    /* .last_kernels = */ NULL,
    /* .workspace_size = */ cl_workspace_size,
    /* .plan_create  = */ cl_plan_create,
    /* .plan_destroy = */ cl_plan_destroy,
    /* .device_is_cpu = */ cl_device_is_cpu,
    /* .fused_on_tensor_cores = */ NULL, /* the OpenCL kernels use no tensor cores */
};
