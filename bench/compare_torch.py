#!/usr/bin/env python3
"""libmlstm vs PyTorch and mlstm_kernels on one CUDA GPU, in one process: loads the built libmlstm.so through
ctypes, wraps torch tensors with mlstm_buffer_wrap_cuda and runs on torch's current stream
(mlstm_context_set_cuda_stream).
  --check : relative L2 error of every output (h, m, n, dq, dk, dv, di, df) against a float64 PyTorch
            reference (materialised S x S, autograd for the backward, m held constant) on storage-rounded inputs.
  --bench : CUDA-graph timings (median ms per call) of libmlstm's forward and forward+backward next to its peers,
            on the --shapes (B,NH,S,D or B,NH,S,DQK,DV; the name xlstm7b: DQK 256 / DV 512 at B4 NH8 S2048, B1 NH8
            S4096 and S8192) or on a --dims sweep of DQK/DV pairs at each B,NH,S of --sizes, where every shape
            but the aligned ones (DQK = DV in 64, 128, 256, 512) follows its aligned reference, DQK = DV = the
            smallest of those holding both (the issue's target: at most 1.2x the reference's time).
            Peers (--peers), each timed where it runs and otherwise shown as n/a with the reason:
              sdpa      torch scaled_dot_product_attention(is_causal=True), f16 / bf16 (v may have its own head dim)
              tfla      mlstm_kernels' chunkwise TFLA kernel (mlstm_chunkwise__xl_chunk, chunk size --tfla-chunk)
              parallel  mlstm_kernels' parallel Triton kernel (mlstm_parallel__limit_headdim: DQK = DV in 16..256,
                        powers of two, S a multiple of 64)
            mlstm_kernels' Triton kernels run in f16 / bf16 only with DISABLE_LLVM_OPT=1 in the environment (without
            it Triton's compiler aborts the process on them), as in the anchor figures; in f32 their products are TF32.
            FLOPs: forward 2*B*NH*S*S*(DQK+DV)/2, forward+backward 3.5x that (for the chunkwise kernel, which does
            fewer, parallel-form equivalents). Ratios: ours / reference (time), peer / ours (time: > 1 = we are faster).
  --plan  : print the shapes --bench would run and exit (needs neither torch nor a GPU).
Usage: python3 bench/compare_torch.py --lib build/libmlstm.so [--check] [--bench] [--json out.json]
       python3 bench/compare_torch.py --lib build/libmlstm.so --bench --dims [--sizes "1,8,4096"] --dtypes bf16"""
import argparse
import ctypes as C
import json
import math
import os
import sys
import time

torch = Fnn = None  # imported by load_torch(), so that --help and --plan run without PyTorch

F32, F16, BF16 = 1, 2, 3
DNAME = {F32: "f32", F16: "f16", BF16: "bf16"}
DTYPES = {v: k for k, v in DNAME.items()}
TOL = {F32: 1e-5, F16: 2e-3, BF16: 1e-2}
TENSORS = ["q", "k", "v", "i", "f", "h", "m", "n", "dh", "dq", "dk", "dv", "di", "df"]
DEFAULT_SHAPES = ("1,8,2048,64;1,8,4096,64;1,8,8192,64;1,8,2048,128;1,8,4096,128;1,8,8192,128;1,8,2048,256;"
                  "1,8,4096,256;1,8,8192,256")
PRESETS = {"xlstm7b": "4,8,2048,256,512;1,8,4096,256,512;1,8,8192,256,512"}
DEFAULT_DIMS = "64/128,96/96,128/256,192/192,256/512,320/320,512/512"
ALIGNED = (64, 128, 256, 512)
PEERS = ("tfla", "sdpa", "parallel", "mat")  # "mat": libmlstm's own materialised algorithm (cuBLAS)


def load_torch():
    """imports torch into this module's globals; exits with a message where it is missing or has no GPU"""
    global torch, Fnn
    try:
        import torch as t
        import torch.nn.functional as f
    except ImportError as e:
        sys.exit("compare_torch.py needs PyTorch with CUDA (%s)" % e)
    if not t.cuda.is_available():
        sys.exit("compare_torch.py needs a CUDA GPU: torch %s sees none" % t.__version__)
    torch, Fnn = t, f


def tdt(dtype):
    return {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}[dtype]


class Layout(C.Structure):
    _fields_ = [("batch", C.c_int64), ("head", C.c_int64), ("seq", C.c_int64)]


class Desc(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("batch", C.c_int64), ("heads", C.c_int64), ("seq_len", C.c_int64),
                ("dqk", C.c_int64), ("dv", C.c_int64), ("dtype", C.c_int), ("eps", C.c_float),
                ("scale", C.c_float), ("grad_mode", C.c_int), ("math_mode", C.c_int), ("layout", Layout * 14)]


class DescAlgo(C.Structure):
    """The current mlstm_desc (32 layouts, then the algorithm): for calls that pick the algorithm"""
    _fields_ = Desc._fields_[:-1] + [("layout", Layout * 32), ("algo", C.c_int)]


ALGO_MATERIALIZED = 2  # MLSTM_ALGO_MATERIALIZED


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


def make_desc(lib, B, NH, S, DQK, DV, dtype, grad_mode=0, layouts=None, algo=None):
    """A 0.1-sized desc (14 layouts), accepted as is; with algo, the current desc (returned with it, to keep alive)
    seen through a Desc (its first fields)"""
    if algo is not None:
        full = DescAlgo()
        lib.L.mlstm_desc_init_sized(C.byref(full), C.c_size_t(C.sizeof(full)))
        full.algo = algo
        d = C.cast(C.pointer(full), C.POINTER(Desc)).contents
        d._full = full
    else:
        d = Desc()
        lib.L.mlstm_desc_init_sized(C.byref(d), C.c_size_t(C.sizeof(d)))
    d.batch, d.heads, d.seq_len, d.dqk, d.dv, d.dtype, d.grad_mode = B, NH, S, DQK, DV, dtype, grad_mode
    if layouts:
        for idx, (sb, sh, ss) in layouts.items():
            d.layout[idx].batch, d.layout[idx].head, d.layout[idx].seq = sb, sh, ss
    return d


class Problem:
    """Tensors of one call (torch, on the GPU), optionally in (B, S, NH, D) layout, and their wrapped buffers."""

    def __init__(self, lib, B, NH, S, DQK, DV, dtype, gates="3+n", bsnd=False, seed=0, grad_mode=0, algo=None):
        g = torch.Generator(device="cuda").manual_seed(seed)
        dev = "cuda"
        T = tdt(dtype)
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
        self.desc = make_desc(lib, B, NH, S, DQK, DV, dtype, grad_mode, layouts, algo)
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


# ---- shape lists (no torch needed) ----------------------------------------------------------------------------

def parse_list(text, entry_sep, field_sep, min_fields, width, what):
    """rows of `width` ints >= 1 from "x<f>y<e>x<f>y..."; an entry of min_fields..width fields repeats its last
    field ("96" reads as 96/96, "1,8,4096,128" as 1,8,4096,128,128); a trailing separator is allowed"""
    entries = text.split(entry_sep)
    if entries and not entries[-1].strip():
        entries.pop()
    rows = []
    for entry in entries:
        try:
            vals = [int(x) for x in entry.split(field_sep)]
        except ValueError:
            vals = []
        if not min_fields <= len(vals) <= width or min(vals) < 1:
            raise argparse.ArgumentTypeError("cannot read %s entry %r of %r" % (what, entry, text))
        rows.append(tuple(vals + vals[-1:] * (width - len(vals))))
    if not rows:
        raise argparse.ArgumentTypeError("empty %s list" % what)
    return rows


def parse_shapes(text):
    """B,NH,S,D or B,NH,S,DQK,DV entries, ';'-separated; an entry may be a preset name (PRESETS)"""
    return [row for entry in text.split(";") if entry.strip()
            for row in parse_list(PRESETS.get(entry.strip(), entry), ";", ",", 4, 5, "--shapes")]


def parse_dims(text):
    return parse_list(text, ",", "/", 1, 2, "--dims")


def parse_sizes(text):
    return parse_list(text, ";", ",", 3, 3, "--sizes")


def parse_names(choices, what):
    def parse(text):
        names = [x for x in text.split(",") if x]
        bad = [x for x in names if x not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError("%s: %s not in %s" % (what, ",".join(bad) or "none", ",".join(choices)))
        return names
    return parse


def ref_dim(dqk, dv):
    """the aligned head dim a shape is compared with: the smallest of ALIGNED holding DQK and DV (0: none)"""
    return next((a for a in ALIGNED if max(dqk, dv) <= a), 0)


def is_aligned(dqk, dv):
    return dqk == dv == ref_dim(dqk, dv)


def sweep(sizes, dims):
    """every B,NH,S of sizes times every DQK/DV of dims plus the aligned references they are compared with,
    grouped by reference: the reference first, then the rest in the order given (as bench_mlstm --dims)"""
    order = []
    for group in ALIGNED + (0,):
        members = [d for d in dims if ref_dim(*d) == group]
        if members and group and (group, group) not in order:
            order.append((group, group))
        order += [d for d in dict.fromkeys(members) if d not in order]
    return [size + d for size in sizes for d in order]


def find_ref(rows, r):
    """the earlier row holding r's aligned reference (same dtype, B, NH, S), or None"""
    if is_aligned(r["DQK"], r["DV"]):
        return None
    a = ref_dim(r["DQK"], r["DV"])
    return next((x for x in rows if x is not r and (x["dtype"], x["B"], x["NH"], x["S"], x["DQK"], x["DV"]) ==
                 (r["dtype"], r["B"], r["NH"], r["S"], a, a)), None)


# ---- timing ---------------------------------------------------------------------------------------------------

def median_event_ms(run, iters, reps):
    """median over `reps` of the event-timed ms of run() (which makes `iters` calls) per call"""
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / iters)
    times.sort()
    return times[len(times) // 2]


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
    return median_event_ms(g.replay, iters, reps)


def loop_ms(fn, iters=10, reps=5):
    """median ms per call of fn called `iters` times in a loop (no CUDA graph: includes launch overhead)"""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    return median_event_ms(lambda: [fn() for _ in range(iters)], iters, reps)


def first_line(e):
    text = str(e).strip().splitlines()
    return "%s: %s" % (type(e).__name__, text[0] if text else "")


class NA(Exception):
    """an implementation that does not run on a shape; the message says why"""


class Pair:
    """the forward and the forward+backward call of one implementation on one shape"""

    def __init__(self, fw, fwbw, close=None):
        self.fw, self.fwbw, self.close = fw, fwbw, close


def time_pair(r, key, make):
    """times make()'s calls into r[key_fw_ms] and r[key_fwbw_ms] by CUDA graph; r[key_na] says why not, and
    r[key_note] where a call was timed in a plain loop because capturing it failed"""
    try:
        pair = make()
    except NA as e:
        r[key + "_na"] = str(e)
        return
    except Exception as e:  # one failing implementation must not stop the others
        r[key + "_na"] = "failed: " + first_line(e)
        return
    try:
        for part in ("fw", "fwbw"):
            fn = getattr(pair, part)
            try:
                r["%s_%s_ms" % (key, part)] = graph_ms(fn)
            except Exception as e:
                torch.cuda.synchronize()
                r["%s_%s_ms" % (key, part)] = loop_ms(fn)
                r[key + "_note"] = "timed without a CUDA graph (capture failed: %s)" % first_line(e)
    except Exception as e:
        r[key + "_na"] = "failed: " + first_line(e)
    finally:
        if pair.close:
            pair.close()


# ---- the implementations ----------------------------------------------------------------------------------------

class MlstmKernels:
    """mlstm_kernels' chunkwise TFLA and parallel Triton kernels, or why each is not available"""

    def __init__(self):
        self.version = None
        try:
            from importlib.metadata import version
            self.version = version("mlstm_kernels")
        except Exception:
            pass
        self.tfla, self.tfla_why = self.load("mlstm_kernels.torch.chunkwise.triton_xl_chunk",
                                             "mlstm_chunkwise__xl_chunk")
        self.parallel, self.parallel_why = self.load("mlstm_kernels.torch.parallel.triton_limit_headdim",
                                                     "mlstm_parallel__limit_headdim")

    @staticmethod
    def load(module, name):
        try:
            mod = __import__(module, fromlist=[name])
            return getattr(mod, name), None
        except Exception as e:  # ImportError, or what a broken triton install raises on import
            return None, "%s not importable (%s)" % (name, first_line(e))


def peer_inputs(B, NH, S, DQK, DV, T, gates):
    """q, k (DQK), v (DV) ~ N(0, 1) and, with gates, i ~ N(0, 1), f ~ 3 + N(0, 1) (the anchors' inputs), all
    needing gradients; and the upstream gradient dh (DV)"""
    def t(*shape, shift=0.0):
        return (shift + torch.randn(*shape, device="cuda")).to(T).requires_grad_(True)
    x = dict(q=t(B, NH, S, DQK), k=t(B, NH, S, DQK), v=t(B, NH, S, DV))
    if gates:
        x.update(i=t(B, NH, S), f=t(B, NH, S, shift=3.0))
    return x, torch.randn(B, NH, S, DV, device="cuda").to(T)


def autograd_pair(call, x, dh):
    inputs = tuple(x.values())

    def fwbw():
        torch.autograd.grad(call(**x), inputs, dh)
    return Pair(lambda: call(**x), fwbw)


def triton_dtype_ok(dtype):
    if dtype != F32 and not os.environ.get("DISABLE_LLVM_OPT"):
        raise NA("f16 / bf16 need DISABLE_LLVM_OPT=1 (Triton's compiler aborts the process on them otherwise)")


def ours(lib, shape, dtype, mk, args, algo=None):
    p = Problem(lib, *shape, dtype, "3+n", algo=algo)

    def fw():
        lib.set_stream()
        p.fwd()

    def fwbw():
        fw()
        p.bwd()
    return Pair(fw, fwbw, p.close)


def peer_mat(lib, shape, dtype, mk, args):
    """libmlstm's materialised algorithm (cuBLAS products, the context's own workspace, allocated by the untimed first
    call, so that the graph capture of the timing allocates nothing)"""
    return ours(lib, shape, dtype, mk, args, algo=ALGO_MATERIALIZED)


def peer_sdpa(lib, shape, dtype, mk, args):
    if dtype == F32:
        raise NA("not timed in f32 (SDPA is the f16 / bf16 yardstick)")
    x, dh = peer_inputs(*shape, tdt(dtype), gates=False)
    return autograd_pair(lambda q, k, v: Fnn.scaled_dot_product_attention(q, k, v, is_causal=True), x, dh)


def peer_tfla(lib, shape, dtype, mk, args):
    if mk.tfla is None:
        raise NA(mk.tfla_why)
    triton_dtype_ok(dtype)
    L, T = args.tfla_chunk, tdt(dtype)
    if shape[2] % L:
        raise NA("S not a multiple of its chunk size %d" % L)
    x, dh = peer_inputs(*shape, T, gates=True)
    return autograd_pair(lambda q, k, v, i, f: mk.tfla(q, k, v, i, f, eps=1e-6, chunk_size=L,
                                                       autocast_kernel_dtype=T), x, dh)


def peer_parallel(lib, shape, dtype, mk, args):
    B, NH, S, DQK, DV = shape
    if mk.parallel is None:
        raise NA(mk.parallel_why)
    triton_dtype_ok(dtype)
    if DQK != DV or DQK not in (16, 32, 64, 128, 256):
        raise NA("takes DQK = DV in 16, 32, 64, 128, 256 only")
    if S % 64:
        raise NA("S not a multiple of 64 (its blocks; its output is wrong there)")
    T = tdt(dtype)
    x, dh = peer_inputs(*shape, T, gates=True)
    return autograd_pair(lambda q, k, v, i, f: mk.parallel(q, k, v, i, f, eps=1e-6, autocast_kernel_dtype=T), x, dh)


# (--peers name, row key, table label, setup); "mlstm" is libmlstm itself
IMPLS = {"mlstm": ("mlstm", "ours", ours), "sdpa": ("sdpa", "SDPA", peer_sdpa),
         "tfla": ("tfla_chunk", "TFLA chunkwise", peer_tfla), "parallel": ("triton_par", "Triton parallel", peer_parallel),
         "mat": ("mat", "libmlstm materialised", peer_mat)}


def finish_row(r, ref):
    """TFLOP/s of every timing, each peer's time over ours, ours over the aligned reference's"""
    flops = 2 * r["B"] * r["NH"] * r["S"] * r["S"] * (r["DQK"] + r["DV"]) / 2
    for key in [k for k in r if k.endswith("_ms")]:
        r[key.replace("_ms", "_tflops")] = (3.5 if key.endswith("_fwbw_ms") else 1.0) * flops / r[key] * 1e-9
    for part in ("fw", "fwbw"):
        ours_ms = r.get("mlstm_%s_ms" % part)
        if ours_ms is None:
            continue
        for key, _, _ in IMPLS.values():
            if key != "mlstm" and "%s_%s_ms" % (key, part) in r:
                r["%s_over_mlstm_%s" % (key, part)] = r["%s_%s_ms" % (key, part)] / ours_ms
        if ref is not None and "mlstm_%s_ms" % part in ref:
            r["ref"] = "%d/%d" % (ref["DQK"], ref["DV"])
            r["mlstm_vs_ref_%s" % part] = ours_ms / ref["mlstm_%s_ms" % part]


def bench_all(lib, shapes, dtypes, peers, args):
    mk = MlstmKernels() if {"tfla", "parallel"} & set(peers) else None
    if mk:
        print("mlstm_kernels %s: chunkwise %s; parallel %s; DISABLE_LLVM_OPT=%s" % (
            mk.version or "(no version)", mk.tfla_why or "importable", mk.parallel_why or "importable",
            os.environ.get("DISABLE_LLVM_OPT", "unset")), flush=True)
    rows = []
    for dtype in dtypes:
        for shape in shapes:
            B, NH, S, DQK, DV = shape
            r = dict(dtype=DNAME[dtype], B=B, NH=NH, S=S, DQK=DQK, DV=DV)
            for name in ["mlstm"] + peers:
                key, _, setup = IMPLS[name]
                time_pair(r, key, lambda: setup(lib, shape, dtype, mk, args))
                torch.cuda.empty_cache()
            finish_row(r, find_ref(rows, r))
            rows.append(r)
            print(progress_line(r, peers), flush=True)
    print()
    print("\n".join(table(rows, peers)), flush=True)
    return rows


def profile_all(lib, shapes, dtypes, reps=10):
    """Per-kernel device time of one libmlstm forward + backward (torch.profiler, CUDA activity; mean of reps)."""
    from torch.profiler import profile, ProfilerActivity
    for dtype in dtypes:
        for (B, NH, S, DQK, DV) in shapes:
            p = Problem(lib, B, NH, S, DQK, DV, dtype, "3+n")
            def step():
                lib.set_stream()
                p.fwd()
                p.bwd()
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA], acc_events=True) as pr:
                for _ in range(reps):
                    step()
                torch.cuda.synchronize()
            tot = {}
            for e in pr.events():
                if e.device_type.name == "CUDA":
                    name = e.name.replace("void ", "").split("(")[0][:110] or e.name[:110]
                    tot[name] = tot.get(name, 0.0) + e.device_time / reps
            print("profile %s B%d NH%d S%d %d/%d (us per fw+bw, %d reps):" % (DNAME[dtype], B, NH, S, DQK, DV, reps))
            for name, t in sorted(tot.items(), key=lambda x: -x[1]):
                print("  %9.1f  %s" % (t, name))
            print("  %9.1f  total" % sum(tot.values()), flush=True)
            p.close()
            torch.cuda.empty_cache()


# ---- output (no torch needed) -----------------------------------------------------------------------------------

def ms_cell(r, key, part):
    ms = r.get("%s_%s_ms" % (key, part))
    return "%.4g (%.3g)" % (ms, r["%s_%s_tflops" % (key, part)]) if ms is not None else None


def pair_cell(r, fmt):
    vals = [r.get(fmt % part) for part in ("fw", "fwbw")]
    return ", ".join("%.2f" % v if v is not None else "-" for v in vals) if any(v is not None for v in vals) else ""


def shape_name(r):
    return "%s B%d NH%d S%d %d/%d" % (r["dtype"], r["B"], r["NH"], r["S"], r["DQK"], r["DV"])


def progress_line(r, peers):
    out = [shape_name(r)]
    for name in ["mlstm"] + peers:
        key, label, _ = IMPLS[name]
        cell = " / ".join(c for c in (ms_cell(r, key, "fw"), ms_cell(r, key, "fwbw")) if c)
        out.append("%s %s" % (label, cell or "n/a: " + r.get(key + "_na", "?")))
        if name == "mlstm" and "ref" in r:
            out.append("vs %s %s" % (r["ref"], pair_cell(r, "mlstm_vs_ref_%s")))
        elif name != "mlstm" and pair_cell(r, key + "_over_mlstm_%s"):
            out.append("%s / ours %s" % (label, pair_cell(r, key + "_over_mlstm_%s")))
    return " | ".join(out)


def table(rows, peers):
    """a Markdown table of rows: ms (TFLOP/s) per implementation and part, the ratios, reasons as footnotes"""
    notes = {}

    def note(text):
        return "[%d]" % notes.setdefault(text, len(notes) + 1)

    head = ["dtype", "B", "NH", "S", "DQK/DV", "ours fw", "ours fwbw", "ours / ref (fw, fwbw)"]
    for name in peers:
        label = IMPLS[name][1]
        head += ["%s fw" % label, "%s fwbw" % label, "%s / ours (fw, fwbw)" % label]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["dtype"], str(r["B"]), str(r["NH"]), str(r["S"]), "%d/%d" % (r["DQK"], r["DV"])]
        for name in ["mlstm"] + peers:
            key = IMPLS[name][0]
            mark = " " + note(r[key + "_note"]) if key + "_note" in r else ""
            na = "n/a " + note(r[key + "_na"]) if key + "_na" in r else "-"
            cells += [(ms_cell(r, key, part) or na) + mark for part in ("fw", "fwbw")]
            if name == "mlstm":
                ratio = pair_cell(r, "mlstm_vs_ref_%s")
                over = any(r.get("mlstm_vs_ref_" + part, 0) > 1.2 for part in ("fw", "fwbw"))
                cells.append("aligned" if is_aligned(r["DQK"], r["DV"]) else
                             "%s (vs %s)%s" % (ratio, r["ref"], " over" if over else "") if ratio else "-")
            else:
                cells.append(pair_cell(r, key + "_over_mlstm_%s") or "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: ms (TFLOP/s); FLOPs forward 2*B*NH*S*S*(DQK+DV)/2, forward+backward 3.5x. ours / ref: our time"
                 " over that of the aligned reference shape (target <= 1.2, 'over' where missed); X / ours: X's time over ours.")
    lines += ["[%d] %s" % (i, text) for text, i in notes.items()]
    return lines


def plan(shapes, dtypes, peers):
    for dtype in dtypes:
        for shape in shapes:
            r = dict(dtype=DNAME[dtype], B=shape[0], NH=shape[1], S=shape[2], DQK=shape[3], DV=shape[4])
            a = ref_dim(shape[3], shape[4])
            print("%-28s %s" % (shape_name(r), "aligned" if is_aligned(shape[3], shape[4]) else
                                "vs %d/%d" % (a, a) if a else "no aligned reference"))
    print("peers: %s" % (", ".join(peers) or "none"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default=os.path.join("build", "libmlstm.so"))
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--plan", action="store_true", help="print the shapes --bench would run, then exit")
    ap.add_argument("--profile", action="store_true",
                    help="per-kernel device time of one fw+bw per shape (torch.profiler), instead of --check/--bench")
    ap.add_argument("--dtypes", default="bf16,f16,f32", type=parse_names(list(DTYPES), "--dtypes"))
    ap.add_argument("--shapes", default=None, type=parse_shapes,
                    help="B,NH,S,D or B,NH,S,DQK,DV[;...] or a preset (%s); default: %s" % (
                        ", ".join(PRESETS), DEFAULT_SHAPES))
    ap.add_argument("--dims", nargs="?", const=parse_dims(DEFAULT_DIMS), default=None, type=parse_dims,
                    help="sweep DQK/DV[,...] (D alone = D/D; without a list: %s) at the --sizes" % DEFAULT_DIMS)
    ap.add_argument("--sizes", default=None, type=parse_sizes, help="B,NH,S[;...] of --dims (default 1,8,4096)")
    ap.add_argument("--peers", default=",".join(PEERS), type=parse_names(PEERS, "--peers"),
                    help="implementations timed beside ours (default: %s)" % ",".join(PEERS))
    ap.add_argument("--tfla-chunk", type=int, default=128, help="the chunkwise kernel's chunk size (default 128)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.shapes and (args.dims or args.sizes):
        ap.error("--shapes lists whole shapes; --dims / --sizes build a sweep: give one")
    if args.dims or args.sizes:
        shapes = sweep(args.sizes or [(1, 8, 4096)], args.dims or parse_dims(DEFAULT_DIMS))
    else:
        shapes = args.shapes or parse_shapes(DEFAULT_SHAPES)
    dtypes = [DTYPES[d] for d in args.dtypes]
    if args.plan:
        plan(shapes, dtypes, args.peers)
        return 0
    if not args.check and not args.bench and not args.profile:
        args.check = args.bench = True
    load_torch()
    try:
        lib = Lib(args.lib)
    except (OSError, RuntimeError) as e:
        sys.exit("cannot use %s: %s" % (args.lib, e))
    print("device: %s (torch %s) %s" % (lib.device, torch.__version__, time.strftime("%Y-%m-%d %H:%M")), flush=True)
    result = {"device": lib.device, "date": time.strftime("%Y-%m-%d")}
    if args.profile:
        profile_all(lib, shapes, dtypes)
    if args.check:
        result["check"] = check_all(lib)
    if args.bench:
        result["bench"] = bench_all(lib, shapes, dtypes, args.peers, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    bad = [c["name"] for c in result.get("check", []) if not c.get("ok")]
    if bad:
        print("FAILED:", ", ".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
