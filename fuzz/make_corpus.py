#!/usr/bin/env python3
# Writes the seed corpus of fuzz/fuzz_api.c into fuzz/corpus/ (or the folder given): small inputs in the harness's
# byte format (its readers: gen_desc, fuzz_host, fuzz_device, fuzz_buffers, fuzz_misc), one per interesting case:
# valid tiny calls of every dtype and direction, strided layouts, each kind of invalid argument, aliasing.
# Deterministic. Usage: python3 fuzz/make_corpus.py [outdir]
import os
import struct
import sys

OP_MISC, OP_FWD_HOST, OP_BWD_HOST, OP_FWD, OP_BWD, OP_BUFFERS = range(6)
Q, K, V, I, F, H, M, N, DH, DQ, DK, DV, DI, DF = range(14)
HEAD_SPECIAL = [0, -1, 513, -2**63, 2**63 - 1, 2**31, 2**32, 2**40, 600, 1024, -512, 2**62]
FUZZ_DQK, FUZZ_DV = 3, 5  # the harness pins valid head dims to these (each dims/dtype pair is a kernel build)
DIM_SPECIAL = [0, -1, -2, -2**63, 2**63 - 1, 512, 513, 2**31, 2**31 + 1, 2**32, 2**40, 2**62, 3037000500, 65536,
               2**20, 17, 64, 128, 1000, 4096]
FLOAT_SPECIAL = ['0', '-0', '-1e-6', 'nan', 'inf', '-inf', 'max', '-max', 'min', 'denorm', '1', '1e10', '-1',
                 '1e30']
STRIDE_SPECIAL = [-1, 0, 1, 2, -2**63, 2**63 - 1, 2**62, 2**32, 2**31, (2**63 - 1) // 2, -(2**63 - 1), 3]


def u64(v):
    return struct.pack('<Q', v & (2**64 - 1))


def u32(v):
    return struct.pack('<I', v & (2**32 - 1))


def dim(v, kind):
    """kind 0: batch/heads (tiny 1..3), 1: dqk, 2: seq_len (tiny 1..9), 3: dv (valid head dims are pinned to
    FUZZ_DQK / FUZZ_DV). v: int, ('special', x) or ('raw', x)."""
    if isinstance(v, tuple):
        if v[0] == 'special':
            table = HEAD_SPECIAL if kind in (1, 3) else DIM_SPECIAL
            return bytes([224, table.index(v[1])])
        return bytes([255]) + u64(v[1])
    if kind in (1, 3):
        assert v == (FUZZ_DQK if kind == 1 else FUZZ_DV), 'valid head dims are pinned'
        return bytes([0, 0])
    if kind == 0:
        assert 1 <= v <= 3
        return bytes([0, v - 1])
    assert 1 <= v <= 9
    return bytes([0, v - 1])


def fl(v, choices_idx=None):
    """Default: None; index into the harness's choice table: ('choice', i); special: ('special', name)."""
    if v is None:
        return bytes([0])
    if v[0] == 'choice':
        return bytes([192, v[1]])
    if v[0] == 'special':
        return bytes([224, FLOAT_SPECIAL.index(v[1])])
    return bytes([255]) + u32(v[1])


def enum(v, nvalid, first):
    if first <= v < first + nvalid:
        return bytes([v - first])
    return bytes([255]) + u32(v)


def desc(B=1, NH=1, S=4, DQK=FUZZ_DQK, DV=FUZZ_DV, dtype=1, eps=None, scale=None, grad=0, math=0, layouts=None, flags=0):
    """layouts: None (all contiguous) or dict tensor -> ('bsnd',) | ('pad', p, q) | ('raw', sb, sh, ss)."""
    b = bytes([flags])
    if flags in (0xff,):
        return b
    b += dim(B, 0) + dim(NH, 0) + dim(S, 2) + dim(DQK, 1) + dim(DV, 3)
    b += enum(dtype, 3, 1) + fl(eps) + fl(scale) + enum(grad, 2, 0) + enum(math, 2, 0)
    if not layouts:
        return b + bytes([0])
    b += bytes([160])
    for t in range(14):
        l = layouts.get(t)
        if l is None:
            b += bytes([0])
        elif l[0] == 'bsnd':
            b += bytes([128])
        elif l[0] == 'pad':
            b += bytes([192, l[1], l[2]])
        else:
            b += bytes([255])
            for st in l[1:]:
                if isinstance(st, tuple):          # ('special', value)
                    b += bytes([216, STRIDE_SPECIAL.index(st[1])])
                elif st == 'negdim':
                    b += bytes([200])
                elif 0 <= st < 48:
                    b += bytes([0, st])
                else:
                    b += bytes([248]) + u64(st)
    return b


def host(op, d, ctx_null=False, rerun=False, null_tensor=None, modes=None, seed=1):
    bwd = op == OP_BWD_HOST
    used = range(14) if bwd else range(8)
    outs = range(DQ, 14) if bwd else range(H, 8)
    b = bytes([op]) + d + bytes([0x80 if ctx_null else (1 if rerun else 0)])
    for t in used:
        b += bytes([0 if t == null_tensor else 1])
    b += u64(seed)
    for t in used:
        if t != null_tensor and t not in outs:
            b += bytes([(modes or {}).get(t, 0)])
    return b


# device buffer kinds, as the first byte c of pick_buffer
NULLBUF, WRONG_DTYPE, FOREIGN, TOO_SMALL, ALIAS, ARENA_PACKED, ARENA_RANDOM, VIEW_FRESH, FRESH = \
    0, 2, 4, 6, 8, 12, 24, 60, 72


def device(op, d, kinds=None, ctx_null=False, rerun=False, seed=2, slack=0, a2=None):
    bwd = op == OP_BWD
    used = range(14) if bwd else range(8)
    b = bytes([op]) + d + bytes([0x80 if ctx_null else (1 if rerun else 0)]) + u64(seed)
    for t in used:
        c = (kinds or {}).get(t, FRESH)
        b += bytes([c, slack, (a2 or {}).get(t, 3)])
    return b


def buffers(ops, seed=3):
    """ops: list of byte strings, each one operation (kind byte, slot byte, arguments)."""
    return bytes([OP_BUFFERS]) + u64(seed) + bytes([len(ops) - 1]) + b''.join(ops)


def count_tiny(n):
    return bytes([0, n - 1])


def count_avail():
    return bytes([160])


def count_zero():
    return bytes([190])


def count_huge(shift=0):
    return bytes([200, shift])


def count_special(i):
    return bytes([215, i])


def create(slot, dtype=1, count=None, out_null=False):
    return bytes([0, slot, dtype - 1]) + (count or count_tiny(16)) + bytes([0x55 if out_null else 0])


def create_bad_dtype(slot, dtype, count=None):
    return bytes([0, slot, 255]) + u32(dtype) + (count or count_tiny(8)) + bytes([0])


def view(slot, parent, off, count, off_minus_one=True, out_null=False):
    return bytes([2, slot, parent]) + off + bytes([1 if off_minus_one else 0]) + count + \
        bytes([0x55 if out_null else 0])


def rw(kind, slot, off, count, off_minus_one=True, host_null=False):
    return bytes([3 if kind == 'write' else 4, slot]) + off + bytes([1 if off_minus_one else 0]) + count + \
        bytes([0x55 if host_null else 0])


def destroy(slot):
    return bytes([5, slot])


def query(slot):
    return bytes([6, slot])


def verify():
    return bytes([7, 0])


def misc(code=-3, opt_case=0, opt_bytes=b'', d=None, tensor=0):
    return bytes([OP_MISC]) + u32(code) + u32(1) + bytes([0, 0, opt_case]) + opt_bytes + (d or desc()) + \
        bytes([tensor & 0xff])


def seeds():
    s = {}
    # valid tiny calls, every dtype, both directions, host and device
    # valid calls: every (dtype, direction, gradient mode) once at least, so that replaying the seeds builds
    # (and PoCL caches) all nine kernel programs the fuzzer can reach
    for name, dt in (('f32', 1), ('f16', 2), ('bf16', 3)):
        s[f'fwd_host_{name}'] = host(OP_FWD_HOST, desc(B=2, NH=2, S=7, dtype=dt))
        s[f'bwd_dev_{name}'] = device(OP_BWD, desc(B=2, NH=1, S=6, dtype=dt))
        s[f'bwd_host_detached_{name}'] = host(OP_BWD_HOST, desc(S=8, grad=1, dtype=dt))
        # PoCL builds each kernel for small grids ("smallgrid") and, separately, a generic version for large
        # ones; once the generic one exists in a process it serves small grids too, so a warm-up that meets a
        # large grid first never caches the small-grid build. The zz_ names make replay_main (which runs files
        # in name order) meet every small-grid call first; libFuzzer orders by size, also small grids first.
        big = ('raw', 768)  # B*NH = 768 rows of 256 work-items each: past PoCL's small-grid limit
        s[f'zz_biggrid_fwd_host_{name}'] = host(OP_FWD_HOST, desc(NH=big, S=1, dtype=dt))
        s[f'zz_biggrid_bwd_host_{name}'] = host(OP_BWD_HOST, desc(NH=big, S=1, dtype=dt))
        s[f'zz_biggrid_bwd_host_detached_{name}'] = host(OP_BWD_HOST, desc(NH=big, S=1, grad=1, dtype=dt))
    s['bwd_host_f32'] = host(OP_BWD_HOST, desc(B=1, NH=2, S=5))
    s['fwd_dev_f32'] = device(OP_FWD, desc(B=1, NH=3, S=9))
    s['fwd_host_s1'] = host(OP_FWD_HOST, desc(B=1, NH=1, S=1))
    s['bwd_host_scale_eps0'] = host(OP_BWD_HOST, desc(S=8, scale=('choice', 2), eps=('choice', 0)))
    s['fwd_host_rerun'] = host(OP_FWD_HOST, desc(B=2, S=9), rerun=True)
    s['bwd_dev_rerun'] = device(OP_BWD, desc(NH=2, S=9, dtype=3), rerun=True)
    s['fwd_host_specials'] = host(OP_FWD_HOST, desc(S=9), modes={Q: 7, K: 7, V: 7, I: 7, F: 7})
    s['bwd_host_rawbits'] = host(OP_BWD_HOST, desc(S=4), modes={t: 6 for t in range(9)})
    s['fwd_host_seq128'] = host(OP_FWD_HOST, desc(S=('special', 128)))
    # layouts
    bsnd = {t: ('bsnd',) for t in range(14)}
    s['fwd_host_bsnd'] = host(OP_FWD_HOST, desc(B=2, NH=3, S=5, layouts=bsnd))
    s['bwd_dev_bsnd'] = device(OP_BWD, desc(B=2, NH=2, S=4, layouts=bsnd))
    s['bwd_host_padded'] = host(OP_BWD_HOST, desc(B=2, NH=2, S=3, layouts={t: ('pad', 2, 1) for t in range(14)}))
    s['fwd_host_broadcast_q'] = host(OP_FWD_HOST, desc(B=2, NH=2, S=3, layouts={Q: ('raw', 0, 0, 4)}))
    s['fwd_dev_output_stride0'] = device(OP_FWD, desc(B=2, S=3, layouts={H: ('raw', 0, 0, 4)}))
    s['fwd_host_negative_stride'] = host(OP_FWD_HOST, desc(S=3, layouts={K: ('raw', 4, 4, 'negdim')}))
    s['bwd_host_huge_stride'] = host(OP_BWD_HOST, desc(B=2, S=2, layouts={DQ: ('raw', ('special', 2**63 - 1), 0, 4)}))
    s['fwd_host_interleaved'] = host(OP_FWD_HOST, desc(B=3, NH=2, S=1, layouts={M: ('raw', 2, 3, 1)}))
    # invalid descriptors
    s['desc_null'] = host(OP_FWD_HOST, desc(flags=0xff))
    s['desc_struct_size'] = device(OP_FWD, desc(flags=0xfe))
    s['desc_dqk_513'] = host(OP_FWD_HOST, desc(DQK=('special', 513)))
    s['desc_dv_0'] = device(OP_BWD, desc(DV=('special', 0)))
    s['desc_batch_neg'] = host(OP_BWD_HOST, desc(B=('special', -1)))
    s['desc_overflow'] = host(OP_FWD_HOST, desc(B=('special', 2**40), NH=('special', 2**40), S=('special', 2**31)))
    s['desc_int64max'] = device(OP_FWD, desc(S=('special', 2**63 - 1)))
    s['desc_sqrt_overflow'] = device(OP_BWD, desc(B=('special', 3037000500), NH=('special', 3037000500)))
    s['desc_dtype_bad'] = host(OP_FWD_HOST, desc(dtype=7))
    s['desc_eps_nan'] = host(OP_FWD_HOST, desc(eps=('special', 'nan')))
    s['desc_eps_neg'] = device(OP_FWD, desc(eps=('special', '-1e-6')))
    s['desc_scale_inf'] = host(OP_BWD_HOST, desc(scale=('special', 'inf')))
    s['desc_grad_bad'] = host(OP_BWD_HOST, desc(grad=9))
    s['desc_math_bad'] = device(OP_BWD, desc(math=-1))
    s['desc_huge_valid_dev'] = device(OP_FWD, desc(B=('special', 65536), S=('special', 4096)))
    # invalid handles and buffers
    s['host_ctx_null'] = host(OP_BWD_HOST, desc(), ctx_null=True)
    s['host_null_array'] = host(OP_BWD_HOST, desc(), null_tensor=DV)
    s['dev_ctx_null'] = device(OP_FWD, desc(), ctx_null=True)
    s['dev_null_buffer'] = device(OP_FWD, desc(), kinds={M: NULLBUF})
    s['dev_wrong_dtype'] = device(OP_BWD, desc(dtype=2), kinds={DK: WRONG_DTYPE})
    s['dev_foreign_ctx'] = device(OP_BWD, desc(), kinds={DH: FOREIGN})
    s['dev_too_small'] = device(OP_FWD, desc(S=6), kinds={V: TOO_SMALL})
    s['dev_alias_out_in'] = device(OP_FWD, desc(), kinds={H: ALIAS}, a2={H: 0})
    s['dev_alias_in_in'] = device(OP_FWD, desc(), kinds={K: ALIAS}, a2={K: 0})
    s['dev_arena_packed'] = device(OP_BWD, desc(S=5), kinds={t: ARENA_PACKED for t in range(14)})
    s['dev_arena_random'] = device(OP_FWD, desc(S=5), kinds={t: ARENA_RANDOM for t in range(8)})
    s['dev_view_offsets'] = device(OP_BWD, desc(S=3, dtype=2), kinds={t: VIEW_FRESH for t in range(14)}, slack=2)
    # buffer operation sequences
    s['buf_roundtrip'] = buffers([create(0, 1, count_tiny(32)), rw('write', 0, count_tiny(3), count_tiny(8)),
                                  rw('read', 0, count_tiny(1), count_avail()), query(0), verify(), destroy(0)])
    s['buf_views'] = buffers([create(1, 2, count_tiny(64)), view(2, 1, count_tiny(5), count_tiny(20)),
                              view(3, 2, count_tiny(2), count_avail()), rw('write', 3, count_tiny(1), count_tiny(4)),
                              rw('read', 1, count_tiny(1), count_avail()), verify(), destroy(3), destroy(2)])
    s['buf_bad_args'] = buffers([create(0, 3, count_zero()), create(0, 1, count_huge(0)), create(1, 2, count_huge(2)),
                                 create(2, 1, count_special(0)), create(3, 2, count_special(6)),
                                 create_bad_dtype(4, 0), create(5, 1, None, out_null=True),
                                 create(6, 1, count_tiny(10)), rw('write', 6, count_tiny(10), count_tiny(2)),
                                 rw('read', 6, count_special(0), count_tiny(4)),
                                 rw('read', 6, count_tiny(1), count_special(0)),
                                 rw('write', 6, count_tiny(1), count_tiny(1), host_null=True),
                                 view(7, 6, count_tiny(10), count_tiny(2)), view(7, 6, count_special(0),
                                                                                  count_special(1)),
                                 view(7, 5, count_tiny(1), count_tiny(1)), verify()])
    # misc
    s['misc_struct_size'] = misc(opt_case=0, opt_bytes=u32(7))
    s['misc_out_null'] = misc(opt_case=1)
    s['misc_device_neg'] = misc(opt_case=2, opt_bytes=u32(5))
    s['misc_backend_bogus'] = misc(opt_case=3, opt_bytes=bytes(range(8)))
    s['misc_backend_cuda'] = misc(opt_case=4)
    s['misc_extent_bsnd'] = misc(d=desc(B=2, NH=3, S=4, layouts=bsnd), tensor=V)
    s['misc_extent_negative'] = misc(d=desc(layouts={DF: ('raw', -1, 0, 1)}), tensor=DF)
    s['misc_extent_bad_index'] = misc(d=desc(), tensor=-1)
    return s


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus')
    os.makedirs(out, exist_ok=True)
    for name, data in sorted(seeds().items()):
        with open(os.path.join(out, name), 'wb') as fh:
            fh.write(data)
    print(f'{len(seeds())} seeds written to {out}')


if __name__ == '__main__':
    main()
