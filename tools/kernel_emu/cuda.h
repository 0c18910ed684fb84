/* kernel_emu: stand-in for <cuda.h> when a kernel header is compiled for the host CPU: the CUtensorMap type only (its
 * bytes hold emu_wgmma.h's EmuTmaMap). */
#pragma once
struct alignas(64) CUtensorMap_st {
    unsigned long long opaque[16];
};
typedef CUtensorMap_st CUtensorMap;
