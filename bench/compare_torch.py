#!/usr/bin/env python3
"""libmlstm vs PyTorch on one CUDA GPU, in one process: loads the built libmlstm.so through ctypes, wraps
torch tensors with mlstm_buffer_wrap_cuda and runs on torch's current stream (mlstm_context_set_cuda_stream).
  --check : relative L2 error of every output (h, m, n, dq, dk, dv, di, df) against a float64 PyTorch
            reference (materialised S x S, autograd for the backward, m held constant) on storage-rounded inputs.
  --bench : CUDA-graph timings of libmlstm fwd / fwd+bwd against scaled_dot_product_attention(is_causal=True)
            and, if importable, mlstm_kernels' parallel Triton kernels (mlstm_parallel__limit_headdim; in f16 /
            bf16 only with DISABLE_LLVM_OPT=1 set, without which Triton's compiler aborts the process on them);
            FLOPs fwd 2*2*B*NH*S*S*D/2, fwd+bwd 3.5x that.
Usage: python3 bench/compare_torch.py --lib build/libmlstm.so [--check] [--bench] [--json out.json]"""
import argparse
import ctypes as C
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as Fnn

F32, F16, BF16 = 1, 2, 3
TDT = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}
DNAME = {F32: "f32", F16: "f16", BF16: "bf16"}
TOL = {F32: 1e-5, F16: 2e-3, BF16: 1e-2}
TENSORS = ["q", "k", "v", "i", "f", "h", "m", "n", "dh", "dq", "dk", "dv", "di", "df"]


class Layout(C.Structure):
    _fields_ = [("batch", C.c_int64), ("head", C.c_int64), ("seq", C.c_int64)]


class Desc(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("batch", C.c_int64), ("heads", C.c_int64), ("seq_len", C.c_int64),
                ("dqk", C.c_int64), ("dv", C.c_int64), ("dtype", C.c_int), ("eps", C.c_float),
                ("scale", C.c_float), ("grad_mode", C.c_int), ("math_mode", C.c_int), ("layout", Layout * 14)]


class Options(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("backend", C.c_char_p), ("device", C.c_int),
                ("opencl_platform", C.c_int)]


class Lib:
    def __init__(self, path):
        self.L = C.CDLL(path)
        L = self.L
        L.mlstm_status_string.restype = C.c_char_p
        L.mlstm_context_last_error.restype = C.c_char_p
        L.mlstm_last_error_global.restype = C.c_char_p
        L.mlstm_context_device_name.restype = C.c_char_p
        L.mlstm_buffer_wrap_cuda.argtypes = [C.c_void_p, C.c_void_p, C.c_int, C.c_size_t, C.POINTER(C.c_void_p)]
        L.mlstm_context_set_cuda_stream.argtypes = [C.c_void_p, C.c_void_p]
        L.mlstm_parallel_fwd.argtypes = [C.c_void_p, C.POINTER(Desc)] + [C.c_void_p] * 8
        L.mlstm_parallel_bwd.argtypes = [C.c_void_p, C.POINTER(Desc)] + [C.c_void_p] * 14
        L.mlstm_buffer_destroy.argtypes = [C.c_void_p]
        L.mlstm_context_destroy.argtypes = [C.c_void_p]
        L.mlstm_synchronize.argtypes = [C.c_void_p]
        opts = Options()
        L.mlstm_options_init_sized(C.byref(opts), C.c_size_t(C.sizeof(opts)))  # the init is inline in C: pass our size
        opts.backend = b"cuda"
        ctx = C.c_void_p()
        st = L.mlstm_context_create(C.byref(opts), C.byref(ctx))
        if st != 0:
            raise RuntimeError("mlstm_context_create: %s" % L.mlstm_last_error_global().decode())
        self.ctx = ctx
        self.device = L.mlstm_context_device_name(ctx).decode()

    def check(self, st, what):
        if st != 0:
            raise RuntimeError("%s failed (%d %s): %s" % (what, st, self.L.mlstm_status_string(st).decode(),
                                                         self.L.mlstm_context_last_error(self.ctx).decode()))

    def wrap(self, t, dtype):
        b = C.c_void_p()
        self.check(self.L.mlstm_buffer_wrap_cuda(self.ctx, C.c_void_p(t.data_ptr()), dtype,
                                                 t.untyped_storage().nbytes() // t.element_size() -
                                                 t.storage_offset(), C.byref(b)), "wrap")
        return b

    def set_stream(self):
        self.check(self.L.mlstm_context_set_cuda_stream(self.ctx, C.c_void_p(torch.cuda.current_stream().cuda_stream)),
                   "set_stream")


def make_desc(lib, B, NH, S, DQK, DV, dtype, grad_mode=0, layouts=None):
    d = Desc()
    lib.L.mlstm_desc_init_sized(C.byref(d), C.c_size_t(C.sizeof(d)))  # a 0.1-sized desc (14 layouts): accepted as is
    d.batch, d.heads, d.seq_len, d.dqk, d.dv, d.dtype, d.grad_mode = B, NH, S, DQK, DV, dtype, grad_mode
    if layouts:
        for idx, (sb, sh, ss) in layouts.items():
            d.layout[idx].batch, d.layout[idx].head, d.layout[idx].seq = sb, sh, ss
    return d


class Problem:
    """Tensors of one call (torch, on the GPU), optionally in (B, S, NH, D) layout, and their wrapped buffers."""

    def __init__(self, lib, B, NH, S, DQK, DV, dtype, gates="3+n", bsnd=False, seed=0, grad_mode=0):
        g = torch.Generator(device="cuda").manual_seed(seed)
        dev = "cuda"
        T = TDT[dtype]
        self.B, self.NH, self.S, self.DQK, self.DV, self.dtype, self.bsnd = B, NH, S, DQK, DV, dtype, bsnd

        def mat(D):
            shape = (B, S, NH, D) if bsnd else (B, NH, S, D)
            return torch.randn(shape, generator=g, device=dev, dtype=torch.float32).to(T)

        def vec():
            shape = (B, S, NH) if bsnd else (B, NH, S)
            return torch.empty(shape, device=dev, dtype=torch.float32)

        self.q, self.k, self.v, self.dh = mat(DQK), mat(DQK), mat(DV), mat(DV)
        self.i, self.f = vec(), vec()
        if gates == "extreme":
            self.i.uniform_(-1000, 1000, generator=g)
            self.f.uniform_(-1000, 1000, generator=g)
        else:
            self.i.normal_(generator=g)
            self.f.normal_(generator=g)
            if gates == "3+n":
                self.f += 3.0
        self.h, self.dq, self.dk = torch.empty_like(self.v), torch.empty_like(self.q), torch.empty_like(self.k)
        self.dv = torch.empty_like(self.v)
        self.m, self.n, self.di, self.df = vec(), vec(), vec(), vec()
        layouts = None
        if bsnd:
            layouts = {}
            for idx, name in enumerate(TENSORS):
                D = {"q": DQK, "k": DQK, "dq": DQK, "dk": DQK}.get(name, DV)
                if name in ("i", "f", "m", "n", "di", "df"):
                    layouts[idx] = (S * NH, 1, NH)
                else:
                    layouts[idx] = (S * NH * D, D, NH * D)
        self.desc = make_desc(lib, B, NH, S, DQK, DV, dtype, grad_mode, layouts)
        self.bufs = {}
        for name in TENSORS:
            t = getattr(self, name)
            self.bufs[name] = lib.wrap(t, F32 if t.dtype == torch.float32 and name in "i f m n di df".split() else dtype)
        self.lib = lib

    def poison(self):
        for name in ("h", "m", "n", "dq", "dk", "dv", "di", "df"):
            getattr(self, name).fill_(float("nan"))

    def fwd(self):
        L, b = self.lib, self.bufs
        self.lib.check(L.L.mlstm_parallel_fwd(L.ctx, C.byref(self.desc), b["q"], b["k"], b["v"], b["i"], b["f"],
                                              b["h"], b["m"], b["n"]), "mlstm_parallel_fwd")

    def bwd(self):
        L, b = self.lib, self.bufs
        self.lib.check(L.L.mlstm_parallel_bwd(L.ctx, C.byref(self.desc), *[b[x] for x in TENSORS]),
                       "mlstm_parallel_bwd")

    def close(self):
        for b in self.bufs.values():
            self.lib.L.mlstm_buffer_destroy(b)


def canon(x, bsnd):
    """(B, S, NH, ...) -> (B, NH, S, ...)"""
    return x.transpose(1, 2) if bsnd else x


def reference(p, grad_mode, h_stored):
    """float64 forward and backward on the storage-rounded inputs; m is held constant in the backward."""
    q, k, v, dh = [canon(getattr(p, x), p.bsnd).double() for x in ("q", "k", "v", "dh")]
    i, f = [canon(getattr(p, x), p.bsnd).double() for x in ("i", "f")]
    q, k, v, i, f = [x.clone().requires_grad_(True) for x in (q, k, v, i, f)]
    scale = 1.0 / math.sqrt(p.DQK)
    S = p.S
    a = Fnn.logsigmoid(f)
    F = torch.cumsum(a, -1)
    logD = F[..., :, None] - F[..., None, :] + i[..., None, :]
    mask = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
    logD = logD.masked_fill(~mask, float("-inf"))
    m = torch.clamp(logD.max(-1).values, min=-10.0).detach()
    Dp = torch.exp(logD - m[..., None])
    Sm = scale * (q @ k.transpose(-1, -2))
    Cm = Sm * Dp
    l = Cm.sum(-1)
    em = torch.exp(-m)
    nrm = torch.maximum(l.abs(), em)
    nsig = torch.where(l.abs() > em, l, em).detach()
    if grad_mode == 1:
        nrm = nrm.detach()
    h = (Cm @ v) / (nrm + 1e-6)[..., None]
    h.backward(dh)
    out = dict(h=h.detach(), m=m, n=nsig, dq=q.grad, dk=k.grad, dv=v.grad, di=i.grad, df=f.grad)
    return out


def rel(x, ref):
    x = x.double()
    den = ref.norm().item()
    num = (x - ref).norm().item()
    return num / den if den > 0 else num


def check_case(lib, name, B, NH, S, DQK, DV, dtype, gates="3+n", bsnd=False, grad_mode=0, determinism=False, seed=0):
    p = Problem(lib, B, NH, S, DQK, DV, dtype, gates, bsnd, seed, grad_mode)
    lib.set_stream()
    p.poison()
    p.fwd()
    p.bwd()
    torch.cuda.synchronize()
    res = {}
    ref = reference(p, grad_mode, p.h)
    nan = False
    for x in ("h", "m", "n", "dq", "dk", "dv", "di", "df"):
        got = canon(getattr(p, x), bsnd)
        if not torch.isfinite(got).all():
            nan = True
        res[x] = rel(got, ref[x])
    det = None
    if determinism:
        saved = {x: getattr(p, x).clone() for x in ("h", "m", "n", "dq", "dk", "dv", "di", "df")}
        p.poison()
        p.fwd()
        p.bwd()
        torch.cuda.synchronize()
        det = all(torch.equal(saved[x].view(torch.uint8) if saved[x].dtype != torch.float32 else saved[x].view(torch.int32),
                              getattr(p, x).view(torch.uint8) if saved[x].dtype != torch.float32 else getattr(p, x).view(torch.int32))
                  for x in saved)
    p.close()
    tol = TOL[dtype]
    worst = max(res.values())
    ok = (not nan) and (gates == "extreme" or worst <= tol) and (det is not False)
    line = "%-34s %s %s" % (name, " ".join("%s=%.1e" % (x, res[x]) for x in res),
                           ("NaN! " if nan else "") + ("det=%s " % det if det is not None else "") +
                           ("ok" if ok else "FAIL (tol %.0e)" % tol))
    print(line, flush=True)
    return dict(name=name, errors=res, nan=nan, deterministic=det, ok=ok)


def check_all(lib):
    cases = [
        ("f32 D64 S1000 B2H2", 2, 2, 1000, 64, 64, F32, "3+n", False, 0, False),
        ("f32 DQK33 DV17 S130 H3", 1, 3, 130, 33, 17, F32, "n", False, 0, False),
        ("f32 D512 S100", 1, 1, 100, 512, 512, F32, "3+n", False, 0, False),
        ("f32 S1 D8", 1, 1, 1, 8, 8, F32, "n", False, 0, False),
        ("f32 D64 S8192 f~3+N", 1, 1, 8192, 64, 64, F32, "3+n", False, 0, False),
        ("f32 D40 bsnd S300 B2H3", 2, 3, 300, 40, 40, F32, "n", True, 0, False),
        ("f32 D64 S300 detached", 1, 2, 300, 64, 64, F32, "n", False, 1, False),
        ("f32 D32 S200 extreme", 1, 2, 200, 32, 32, F32, "extreme", False, 0, False),
        ("bf16 D64 S1000 (tc)", 1, 2, 1000, 64, 64, BF16, "3+n", False, 0, True),
        ("bf16 D128 S1000 (tc)", 1, 2, 1000, 128, 128, BF16, "3+n", False, 0, True),
        ("bf16 D256 S1000 (tc)", 1, 2, 1000, 256, 256, BF16, "3+n", False, 0, False),
        ("bf16 D128 S777 f~N (tc)", 1, 2, 777, 128, 128, BF16, "n", False, 0, False),
        ("f16 D64 S777 (tc)", 1, 2, 777, 64, 64, F16, "n", False, 0, False),
        ("f16 D128 S777 (tc)", 1, 2, 777, 128, 128, F16, "3+n", False, 0, False),
        ("f16 D256 S777 (tc)", 1, 2, 777, 256, 256, F16, "n", False, 0, False),
        ("bf16 D96 S300 (simt)", 1, 2, 300, 96, 96, BF16, "n", False, 0, False),
        ("f16 DQK40 DV72 S300 (simt)", 1, 2, 300, 40, 72, F16, "3+n", False, 0, False),
        ("bf16 D128 bsnd S500 B2H3 (tc)", 2, 3, 500, 128, 128, BF16, "n", True, 0, False),
        ("bf16 D128 S600 detached (tc)", 1, 2, 600, 128, 128, BF16, "n", False, 1, False),
        ("bf16 D64 S300 extreme (tc)", 1, 2, 300, 64, 64, BF16, "extreme", False, 0, False),
        ("bf16 D128 S8192 f~3+N (tc)", 1, 1, 8192, 128, 128, BF16, "3+n", False, 0, False),
        ("f16 D64 S8192 f~N (tc)", 1, 1, 8192, 64, 64, F16, "n", False, 0, False),
        ("bf16 D128 S8192 f~N (tc)", 1, 1, 8192, 128, 128, BF16, "n", False, 0, False),
        ("f16 D256 S4096 f~N (tc)", 1, 1, 4096, 256, 256, F16, "n", False, 0, False),
        ("f32 D64 S63 f~N H2", 1, 2, 63, 64, 64, F32, "n", False, 0, False),
        ("f32 D64 S4096 f~N", 1, 1, 4096, 64, 64, F32, "n", False, 0, False),
    ]
    out = []
    for c in cases:
        try:
            out.append(check_case(lib, *c))
        except Exception as e:  # keep going: one failure must not hide the others
            print("%-34s ERROR %s" % (c[0], e), flush=True)
            out.append(dict(name=c[0], error=str(e), ok=False))
        torch.cuda.empty_cache()
    return out


def graph_ms(fn, iters=10, reps=5):
    """median ms per call of fn, captured `iters` times in a CUDA graph and replayed"""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(iters):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / iters)
    times.sort()
    return times[len(times) // 2]


def mlstm_kernels_parallel():
    """mlstm_kernels' parallel Triton forward/backward (the predecessor of this library), or None"""
    try:
        from mlstm_kernels.torch.parallel.triton_limit_headdim import mlstm_parallel__limit_headdim
    except ImportError:
        return None
    return mlstm_parallel__limit_headdim


def time_mlstm_kernels(mk, B, NH, S, D, T, r):
    """times mk on q, k, v, i ~ N(0, 1), f ~ 3 + N(0, 1) (as the anchors); fills r's mlstm_kernels_* keys"""
    if T != torch.float32 and not os.environ.get("DISABLE_LLVM_OPT"):
        print("mlstm_kernels not timed in %s: its Triton kernels need DISABLE_LLVM_OPT=1 there" % T)
        return
    q = torch.randn(B, NH, S, D, device="cuda", dtype=T, requires_grad=True)
    k = torch.randn_like(q, requires_grad=True)
    v = torch.randn_like(q, requires_grad=True)
    i = torch.randn(B, NH, S, device="cuda", dtype=T, requires_grad=True)
    f = (3.0 + torch.randn(B, NH, S, device="cuda", dtype=T)).requires_grad_(True)
    dh = torch.randn_like(q)

    def kf():
        mk(q, k, v, i, f, eps=1e-6, autocast_kernel_dtype=T)

    def kfb():
        h = mk(q, k, v, i, f, eps=1e-6, autocast_kernel_dtype=T)
        torch.autograd.grad(h, (q, k, v, i, f), dh)

    try:
        r["mlstm_kernels_fw_ms"] = graph_ms(kf)
        r["mlstm_kernels_fwbw_ms"] = graph_ms(kfb)
    except Exception as e:  # its shape limits: head dims powers of two up to 256, S a multiple of its block
        print("mlstm_kernels timing failed:", e)


def bench_all(lib, shapes, dtypes):
    rows = []
    mk = mlstm_kernels_parallel()
    for dtype in dtypes:
        for (B, NH, S, D) in shapes:
            flops = 2 * 2 * B * NH * S * S * D / 2
            p = Problem(lib, B, NH, S, D, D, dtype, "3+n")

            def lf():
                lib.set_stream()
                p.fwd()

            def lfb():
                lib.set_stream()
                p.fwd()
                p.bwd()

            r = dict(B=B, NH=NH, S=S, D=D, dtype=DNAME[dtype])
            try:
                r["mlstm_fw_ms"] = graph_ms(lf)
                r["mlstm_fwbw_ms"] = graph_ms(lfb)
            except Exception as e:
                print("libmlstm timing failed:", e)
            p.close()
            if dtype != F32:
                T = TDT[dtype]
                q = torch.randn(B, NH, S, D, device="cuda", dtype=T, requires_grad=True)
                k = torch.randn_like(q, requires_grad=True)
                v = torch.randn_like(q, requires_grad=True)
                do = torch.randn_like(q)

                def sf():
                    Fnn.scaled_dot_product_attention(q, k, v, is_causal=True)

                def sfb():
                    o = Fnn.scaled_dot_product_attention(q, k, v, is_causal=True)
                    torch.autograd.grad(o, (q, k, v), do)

                try:
                    r["sdpa_fw_ms"] = graph_ms(sf)
                    r["sdpa_fwbw_ms"] = graph_ms(sfb)
                except Exception as e:
                    print("sdpa timing failed:", e)
                del q, k, v, do
            if mk is not None:
                time_mlstm_kernels(mk, B, NH, S, D, TDT[dtype], r)
            for key in list(r):
                if key.endswith("_fw_ms"):
                    r[key.replace("_ms", "_tflops")] = flops / r[key] * 1e-9
                elif key.endswith("_fwbw_ms"):
                    r[key.replace("_ms", "_tflops")] = 3.5 * flops / r[key] * 1e-9
            if "sdpa_fw_ms" in r and "mlstm_fw_ms" in r:
                r["ratio_fw"] = r["sdpa_fw_ms"] / r["mlstm_fw_ms"]
                r["ratio_fwbw"] = r["sdpa_fwbw_ms"] / r["mlstm_fwbw_ms"]
            rows.append(r)
            print("%-5s B%d NH%d S%-5d D%-3d | mlstm fw %7.4f ms %6.1f TF  fwbw %7.3f ms %6.1f TF | sdpa fw %s fwbw %s | ratio fw %s fwbw %s"
                  % (r["dtype"], B, NH, S, D, r.get("mlstm_fw_ms", float("nan")), r.get("mlstm_fw_tflops", 0),
                     r.get("mlstm_fwbw_ms", float("nan")), r.get("mlstm_fwbw_tflops", 0),
                     "%.4f ms %.0f TF" % (r["sdpa_fw_ms"], r["sdpa_fw_tflops"]) if "sdpa_fw_ms" in r else "-",
                     "%.3f ms %.0f TF" % (r["sdpa_fwbw_ms"], r["sdpa_fwbw_tflops"]) if "sdpa_fwbw_ms" in r else "-",
                     "%.2f" % r["ratio_fw"] if "ratio_fw" in r else "-",
                     "%.2f" % r["ratio_fwbw"] if "ratio_fwbw" in r else "-"), flush=True)
            if "mlstm_kernels_fw_ms" in r and "mlstm_fw_ms" in r:
                print("      mlstm_kernels (Triton parallel) fw %7.4f ms %6.1f TF  fwbw %7.3f ms %6.1f TF | its time / ours"
                      " fw %.2f fwbw %.2f" % (r["mlstm_kernels_fw_ms"], r["mlstm_kernels_fw_tflops"],
                                             r["mlstm_kernels_fwbw_ms"], r["mlstm_kernels_fwbw_tflops"],
                                             r["mlstm_kernels_fw_ms"] / r["mlstm_fw_ms"],
                                             r["mlstm_kernels_fwbw_ms"] / r["mlstm_fwbw_ms"]), flush=True)
            torch.cuda.empty_cache()
    if mk is None:
        print("mlstm_kernels is not importable: not timed")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default=os.path.join("build", "libmlstm.so"))
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--dtypes", default="bf16,f16,f32")
    ap.add_argument("--shapes", default="1,8,2048,64;1,8,4096,64;1,8,8192,64;1,8,2048,128;1,8,4096,128;"
                                        "1,8,8192,128;1,8,2048,256;1,8,4096,256;1,8,8192,256")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not args.check and not args.bench:
        args.check = args.bench = True
    lib = Lib(args.lib)
    print("device: %s (torch %s) %s" % (lib.device, torch.__version__, time.strftime("%Y-%m-%d %H:%M")), flush=True)
    result = {"device": lib.device, "date": time.strftime("%Y-%m-%d")}
    if args.check:
        result["check"] = check_all(lib)
    if args.bench:
        shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";") if s]
        dts = [{"f32": F32, "f16": F16, "bf16": BF16}[d] for d in args.dtypes.split(",")]
        result["bench"] = bench_all(lib, shapes, dts)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    bad = [c["name"] for c in result.get("check", []) if not c.get("ok")]
    if bad:
        print("FAILED:", ", ".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
