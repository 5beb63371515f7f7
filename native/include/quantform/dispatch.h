// CPU feature detection and kernel tier selection. cpuid (plus xgetbv: the OS must
// save the wide registers) runs once at load; every op family then picks its
// function table with select_kernels(). QUANTFORM_KERNELS=ref|avx2|avx512 in the
// environment, or set_kernel_policy(), can force a lower tier so that tests on
// an AVX-512 machine exercise every tier.
#pragma once
#include <string>

namespace qf {

enum class Tier : int { Ref = 0, Avx2 = 1, Avx512 = 2 };

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, bmi2 = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
  bool os_ymm = false, os_zmm = false;  // XCR0 says the OS saves YMM / ZMM state
  bool os_amx = false;                  // XCR0 enables the tile config and tile data state
  std::string vendor, brand;
};

const CpuFeatures& cpu_features();
Tier best_supported_tier();        // highest tier this CPU and OS can run
Tier active_tier();                // tier in use now
bool tier_supported(Tier t);
const char* tier_name(Tier t);
bool parse_tier(const std::string& s, Tier* out);
// Forces `t` (must be supported) or, with reset == true, returns to the best tier.
bool set_kernel_policy(Tier t);
bool vnni_available();             // AVX-512 VNNI usable and not masked by policy
bool bf16_available();             // AVX-512 BF16 usable and not masked by policy
// AMX tiles with BF16 usable: the CPU has them, the OS saves their state, Linux granted this
// process the tile data permission (asked once, on first call), the policy is the avx512 tier and
// set_amx_enabled(false) / QUANTFORM_AMX=0 did not turn them off.
bool amx_available();
// amx_available() and the CPU has AMX-INT8 (and VNNI, for the calls the tiles leave to it).
bool amx_int8_available();
// Why AMX is not used ("" when it is): for backendInfo.
std::string amx_status();
void set_amx_enabled(bool on);

// Picks the table for the active tier. Tables of tiers the CPU lacks are never
// returned, so their code never runs.
template <class T>
const T& select_kernels(const T& ref, const T& avx2, const T& avx512) {
  switch (active_tier()) {
    case Tier::Avx512: return avx512;
    case Tier::Avx2: return avx2;
    default: return ref;
  }
}

}  // namespace qf
