/* kernel_emu: the sm_90a primitives of kernels_cuda/common/wgmma.cuh and wgmma_ops.cuh for the host (make_wg16.py puts
 * these calls in place of their asm): mbarriers with arrival and transaction counts, named barriers with counts,
 * tensor-memory-access boxes copied at once (128-byte swizzle, zero fill), and wgmma m64nNk16 (SS: both operands
 * K-major in shared memory; RS: A from the warps' registers, B N-major), decoded from the kernels' own descriptors
 * with the swizzle the hardware applies. Waits yield to the other coroutines; a wait that sees no barrier progress
 * for long stops the run as a deadlock. The asynchronous operations land as late as the hardware allows: a wgmma's
 * results reach its accumulators only at the wait_group that retires its commit group (an accumulator read before
 * that sees the old values); an mbarrier phase completes only when a thread waits on it, and only then do the TMA
 * boxes and the cp.async copies whose arrivals it counts land; other cp.async copies land at the wait_group that
 * retires their group. */
#pragma once
#include <map>
#include <utility>
#include <vector>
#include <type_traits>
#include "emu_mma16.h"

/* CUtensorMap's bytes hold this (emu_tma_encode) */
struct EmuTmaMap {
    const unsigned char *p;
    uint64_t dims[4];    /* elements: columns, rows, heads, batches */
    uint64_t strides[3]; /* bytes: rows, heads, batches */
    uint32_t box[2];     /* columns (64), rows */
};

namespace emu {
struct TmaJob { /* a box not yet in shared memory: 16-byte chunks (destination, source or null for zeros) */
    std::vector<std::pair<uint32_t, const unsigned char *>> chunks;
    uint32_t bytes;
};
struct CpJob { /* a cp.async copy not yet in shared memory */
    uint32_t dst;
    const void *src; /* null: 16 zero bytes */
};
/* A phase completes as late as the hardware allows: when a thread waits on it and every arrival is in (the
 * cp.async arrivals, which follow their copies, are counted, and their copies land, only then; the TMA boxes land at
 * the completion) */
struct Mbar {
    int expected, pending;
    int64_t tx;
    uint32_t phase; /* completed phases */
    std::vector<TmaJob> jobs;
    std::vector<std::vector<CpJob>> cp_deferred; /* one per cp.async arrival not yet counted */
};
inline std::map<uint32_t, Mbar> mbars;
/* a thread's wgmma results not yet in its accumulators: (accumulator, values) by commit group, the open group last */
struct WgmmaWrite {
    float *d;
    std::vector<float> v;
};
inline std::vector<std::vector<WgmmaWrite>> wgmma_groups[1024];
inline bool wgmma_open[1024];
/* a thread's cp.async copies not yet in shared memory, by commit group, the open (uncommitted) group last */
inline std::vector<std::vector<CpJob>> cp_groups[1024];
inline bool cp_open[1024];
struct NamedBar {
    int arrived;
    uint32_t gen;
};
inline NamedBar nbars[16];
inline uint64_t progress = 0; /* barrier events, for the deadlock check */
inline void wg_block_start()
{
    mbars.clear();
    for (auto &b : nbars) b = NamedBar{0, 0};
    for (int t = 0; t < 1024; ++t) {
        wgmma_groups[t].clear();
        wgmma_open[t] = false;
        cp_groups[t].clear();
        cp_open[t] = false;
    }
}
/* a wait that yields; stops the run after a long time without any barrier event */
inline void spin(const char *what, uint32_t id)
{
    static uint64_t last = ~0ull, idle = 0;
    if (progress != last) {
        last = progress;
        idle = 0;
    } else if (++idle > 50000000ull) {
        std::fprintf(stderr, "DEADLOCK: thread %d waits at %s 0x%x, no barrier progress\n", (int)threadIdx.x, what, id);
        std::exit(3);
    }
    yield_state(RUN);
}
inline Mbar &mbar(uint32_t bar)
{
    auto it = mbars.find(bar);
    if (it == mbars.end()) {
        std::fprintf(stderr, "kernel_emu: mbarrier 0x%x used before its init\n", bar);
        std::exit(3);
    }
    return it->second;
}
/* (at a wait) the phase completes once every arrival is in and the boxes it expects are all issued; they land now */
inline unsigned char *shared_at(uint32_t saddr);
inline void mbar_try_complete(Mbar &m)
{
    for (const auto &cp : m.cp_deferred) { /* the cp.async arrivals: their copies land, then they count */
        for (const CpJob &j : cp)
            if (j.src) std::memcpy(shared_at(j.dst), j.src, 16);
            else std::memset(shared_at(j.dst), 0, 16);
        if (--m.pending < 0) {
            std::fprintf(stderr, "kernel_emu: an mbarrier got more arrivals than its count %d\n", m.expected);
            std::exit(3);
        }
    }
    m.cp_deferred.clear();
    int64_t issued = 0;
    for (const TmaJob &j : m.jobs) issued += j.bytes;
    if (m.pending == 0 && m.tx == issued) {
        for (const TmaJob &j : m.jobs)
            for (const auto &c : j.chunks)
                if (c.second) std::memcpy(shared_at(c.first), c.second, 16);
                else std::memset(shared_at(c.first), 0, 16);
        m.jobs.clear();
        m.tx = 0;
        ++m.phase;
        m.pending = m.expected;
        ++progress;
    }
}
} // namespace emu
inline unsigned char *emu::shared_at(uint32_t saddr) { return emu_shared(saddr); }

/* wgmma.commit_group: closes this thread's open group; wgmma.wait_group n: every group but the newest n lands */
inline void emu_wgmma_commit() { emu::wgmma_open[threadIdx.x] = false; }
inline void emu_wgmma_wait(int n)
{
    auto &gs = emu::wgmma_groups[threadIdx.x];
    const int closed = (int)gs.size() - (emu::wgmma_open[threadIdx.x] ? 1 : 0);
    const int land = closed - n;
    for (int i = 0; i < land; ++i)
        for (const auto &w : gs[i]) std::memcpy(w.d, w.v.data(), w.v.size() * sizeof(float));
    if (land > 0) gs.erase(gs.begin(), gs.begin() + land);
}
/* the values accumulator d will have once this thread's pending wgmma land (the latest pending write of it, else d) */
inline void emu_wgmma_current(const float *d, int n, float *out)
{
    std::memcpy(out, d, n * sizeof(float));
    for (const auto &g : emu::wgmma_groups[threadIdx.x])
        for (const auto &w : g)
            if (w.d == d) std::memcpy(out, w.v.data(), n * sizeof(float));
}
/* queues the values of accumulator d in this thread's open group (opening one) */
inline void emu_wgmma_queue(float *d, const float *v, int n)
{
    auto &gs = emu::wgmma_groups[threadIdx.x];
    if (!emu::wgmma_open[threadIdx.x]) {
        gs.emplace_back();
        emu::wgmma_open[threadIdx.x] = true;
    }
    gs.back().push_back(emu::WgmmaWrite{d, std::vector<float>(v, v + n)});
}

inline void emu_mbar_init(uint32_t bar, int count) { emu::mbars[bar] = emu::Mbar{count, count, 0, 0}; }
inline void emu_mbar_arrive(uint32_t bar)
{
    emu::Mbar &m = emu::mbar(bar);
    if (m.pending <= 0) {
        std::fprintf(stderr, "kernel_emu: mbarrier 0x%x: more arrivals than its count %d\n", bar, m.expected);
        std::exit(3);
    }
    --m.pending;
    ++emu::progress;
}
/* cp.async (16 bytes, n = 0: zero fill), deferred: it lands at the cp.async.wait_group that retires its group, or at
 * this thread's cp.async.mbarrier.arrive, whichever comes first */
inline void emu_cp_land(const emu::CpJob &j)
{
    if (j.src) std::memcpy(emu_shared(j.dst), j.src, 16);
    else std::memset(emu_shared(j.dst), 0, 16);
}
inline void emu_cp_async16_deferred(uint32_t saddr, const void *gmem, int n)
{
    auto &gs = emu::cp_groups[threadIdx.x];
    if (!emu::cp_open[threadIdx.x]) {
        gs.emplace_back();
        emu::cp_open[threadIdx.x] = true;
    }
    gs.back().push_back(emu::CpJob{saddr, n == 16 ? gmem : nullptr});
}
inline void emu_cp_commit()
{
    if (emu::cp_open[threadIdx.x]) emu::cp_open[threadIdx.x] = false;
    else emu::cp_groups[threadIdx.x].emplace_back(); /* an empty group */
}
inline void emu_cp_wait(int n)
{
    auto &gs = emu::cp_groups[threadIdx.x];
    const int closed = (int)gs.size() - (emu::cp_open[threadIdx.x] ? 1 : 0), land = closed - n;
    for (int i = 0; i < land; ++i)
        for (const auto &j : gs[i]) emu_cp_land(j);
    if (land > 0) gs.erase(gs.begin(), gs.begin() + land);
}
/* cp.async.mbarrier.arrive.noinc: an arrival once every copy this thread issued before has landed (deferred to the
 * phase's completion, mbar_try_complete) */
inline void emu_cp_arrive(uint32_t bar)
{
    auto &gs = emu::cp_groups[threadIdx.x];
    std::vector<emu::CpJob> all;
    for (const auto &g : gs) all.insert(all.end(), g.begin(), g.end());
    gs.clear();
    emu::cp_open[threadIdx.x] = false;
    emu::mbar(bar).cp_deferred.push_back(std::move(all));
    ++emu::progress;
}
inline void emu_mbar_expect_tx(uint32_t bar, uint32_t bytes)
{
    emu::mbar(bar).tx += bytes;
    emu_mbar_arrive(bar);
}
/* returns once the phase of parity `parity` has completed */
inline void emu_mbar_wait(uint32_t bar, uint32_t parity)
{
    for (;;) {
        emu::Mbar &m = emu::mbar(bar);
        if ((m.phase & 1u) != (parity & 1u)) return;
        emu::mbar_try_complete(m);
        if ((m.phase & 1u) != (parity & 1u)) return;
        emu::spin("mbarrier", bar);
    }
}
/* bar.sync / bar.arrive id, n */
inline void emu_named_arrive(int id, int n)
{
    emu::NamedBar &b = emu::nbars[id];
    if (++b.arrived == n) {
        b.arrived = 0;
        ++b.gen;
        ++emu::progress;
    }
}
inline void emu_named_sync(int id, int n)
{
    const uint32_t g = emu::nbars[id].gen;
    emu_named_arrive(id, n);
    while (emu::nbars[id].gen == g) emu::spin("named barrier", (uint32_t)id);
}

/* the 128-byte swizzle: 16-byte chunk bits [4, 7) XOR row bits [7, 10) of the shared-memory byte address */
inline uint32_t emu_sw128(uint32_t a) { return a ^ (((a >> 7) & 7u) << 4); }

inline void emu_tma_encode(void *map, const void *p, const uint64_t dims[4], const uint64_t strides[3], uint32_t box_cols,
                           uint32_t box_rows)
{
    static_assert(sizeof(EmuTmaMap) <= 128, "fits a CUtensorMap");
    EmuTmaMap m{(const unsigned char *)p, {dims[0], dims[1], dims[2], dims[3]}, {strides[0], strides[1], strides[2]},
                {box_cols, box_rows}};
    std::memcpy(map, &m, sizeof m);
}
/* the box at (c0 columns, c1 rows, c2 head, c3 batch) into shared memory at dst, rows 128 bytes apart, swizzled; its
 * bytes complete on bar */
inline void emu_tma_load_4d(uint32_t dst, const void *map, int c0, int c1, int c2, int c3, uint32_t bar)
{
    EmuTmaMap m;
    std::memcpy(&m, map, sizeof m);
    emu::TmaJob job{{}, m.box[0] * m.box[1] * 2};
    for (uint32_t r = 0; r < m.box[1]; ++r)
        for (uint32_t j = 0; j < m.box[0] / 8; ++j) {
            const uint64_t col = (uint64_t)c0 + 8 * j, row = (uint64_t)c1 + r;
            const bool in = c0 >= 0 && c1 >= 0 && col < m.dims[0] && row < m.dims[1] && (uint64_t)c2 < m.dims[2] &&
                            (uint64_t)c3 < m.dims[3];
            job.chunks.emplace_back(emu_sw128(dst + r * 128 + 16 * j),
                                    in ? m.p + (uint64_t)c3 * m.strides[2] + (uint64_t)c2 * m.strides[1] +
                                             row * m.strides[0] + col * 2
                                       : nullptr);
        }
    emu::mbar(bar).jobs.push_back(std::move(job));
    ++emu::progress;
}

/* descriptor fields (kernels_cuda/common/wgmma.cuh desc_sw128): start address, leading and stride byte offsets */
inline uint32_t emu_desc_start(uint64_t d) { return (uint32_t)(d & 0x3FFFu) << 4; }
inline uint32_t emu_desc_lbo(uint64_t d) { return (uint32_t)((d >> 16) & 0x3FFFu) << 4; }
inline uint32_t emu_desc_sbo(uint64_t d) { return (uint32_t)((d >> 32) & 0x3FFFu) << 4; }
/* element (r, k) of a K-major swizzled operand (r: row of A or B, k < 16) */
template <typename T> inline float emu_kmajor(uint64_t d, int r, int k)
{
    const uint32_t a = emu_desc_start(d) + (uint32_t)(r >> 3) * emu_desc_sbo(d) + (uint32_t)(r & 7) * 128 + 2 * k;
    uint16_t bits;
    std::memcpy(&bits, emu_shared(emu_sw128(a)), 2);
    return emu_b16<T>(bits, 0);
}
/* element (k, n) of an N-major swizzled B (64-column blocks lbo apart, 8-row groups sbo apart) */
template <typename T> inline float emu_nmajor(uint64_t d, int k, int n)
{
    const uint32_t a = emu_desc_start(d) + (uint32_t)(n >> 6) * emu_desc_lbo(d) + (uint32_t)(k >> 3) * emu_desc_sbo(d) +
                       (uint32_t)(k & 7) * 128 + 2 * (n & 63);
    uint16_t bits;
    std::memcpy(&bits, emu_shared(emu_sw128(a)), 2);
    return emu_b16<T>(bits, 0);
}

namespace mlstm {
namespace wg {
/* wgmma.mma_async m64nNk16, f32 accumulators: thread t of the warpgroup holds rows 16 (t / 32 % 4) + g (+ 8), columns
 * 8 j + 2 q4 (+ 1) at d[4 j .. 4 j + 3] (mma.sync's m16n8 layout); scale_d = 0 overwrites */
template <typename T, int N> struct WgmmaSS {
    static void run(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d)
    {
        const int l = emu_lane(), g = l >> 2, q4 = l & 3, r0 = 16 * (emu_warp() & 3) + g;
        float out[N / 2];
        emu_wgmma_current(d, N / 2, out);
        for (int j = 0; j < N / 8; ++j)
            for (int e = 0; e < 4; ++e) {
                const int r = r0 + 8 * (e >> 1), c = 8 * j + 2 * q4 + (e & 1);
                double acc = 0.0; /* the 16 products exact, summed in double, one rounding (as emu_mma16816) */
                for (int k = 0; k < 16; ++k) acc += (double)emu_kmajor<T>(da, r, k) * emu_kmajor<T>(db, c, k);
                out[4 * j + e] = (float)((scale_d ? (double)out[4 * j + e] : 0.0) + acc);
            }
        emu_wgmma_queue(d, out, N / 2);
    }
};
template <typename T, int N> struct WgmmaRS {
    static void run(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db, int scale_d)
    {
        const int w = emu_warp(), l = emu_lane(), g = l >> 2, q4 = l & 3;
        for (int i = 0; i < 4; ++i) emu::ma[w][l][i] = a[i];
        emu::warp_bar();
        float ar[2][16]; /* this thread's rows g, g + 8 of A (k 0..15), from the quad's fragments */
        for (int q = 0; q < 4; ++q)
            for (int h = 0; h < 2; ++h) {
                ar[0][2 * q + h] = emu_b16<T>(emu::ma[w][4 * g + q][0], h);
                ar[1][2 * q + h] = emu_b16<T>(emu::ma[w][4 * g + q][1], h);
                ar[0][8 + 2 * q + h] = emu_b16<T>(emu::ma[w][4 * g + q][2], h);
                ar[1][8 + 2 * q + h] = emu_b16<T>(emu::ma[w][4 * g + q][3], h);
            }
        emu::warp_bar();
        float out[N / 2];
        emu_wgmma_current(d, N / 2, out);
        for (int j = 0; j < N / 8; ++j)
            for (int e = 0; e < 4; ++e) {
                const int c = 8 * j + 2 * q4 + (e & 1);
                double acc = 0.0;
                for (int k = 0; k < 16; ++k) acc += (double)ar[e >> 1][k] * emu_nmajor<T>(db, k, c);
                out[4 * j + e] = (float)((scale_d ? (double)out[4 * j + e] : 0.0) + acc);
            }
        emu_wgmma_queue(d, out, N / 2);
    }
};
} // namespace wg
} // namespace mlstm
