// cpuid once at load, tier policy, and the per-family table selectors.
#include "quantform/dispatch.h"

#include <atomic>
#include <cerrno>
#include <cpuid.h>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "quantform/engine.h"
#include "quantform/matmul.h"
#include "quantform/probe.h"
#include "quantform/quant.h"

namespace qf {
namespace {

uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((uint64_t)edx << 32) | eax;
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  char vendor[13] = {0};
  memcpy(vendor, &b, 4); memcpy(vendor + 4, &d, 4); memcpy(vendor + 8, &c, 4);
  f.vendor = vendor;
  __get_cpuid(1, &a, &b, &c, &d);
  const bool osxsave = (c >> 27) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  const bool avx = (c >> 28) & 1;
  if (osxsave && avx) {
    const uint64_t xcr0 = read_xcr0();
    f.os_ymm = (xcr0 & 0x6) == 0x6;             // XMM + YMM state
    f.os_zmm = f.os_ymm && (xcr0 & 0xe0) == 0xe0;  // opmask + ZMM_Hi256 + Hi16_ZMM
  }
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = (b >> 5) & 1;
    f.bmi2 = (b >> 8) & 1;
    f.avx512f = (b >> 16) & 1;
    f.avx512dq = (b >> 17) & 1;
    f.avx512bw = (b >> 30) & 1;
    f.avx512vl = (b >> 31) & 1;
    f.avx512vnni = (c >> 11) & 1;
    f.amx_bf16 = (d >> 22) & 1;
    f.amx_tile = (d >> 24) & 1;
    f.amx_int8 = (d >> 25) & 1;
    if (osxsave) f.os_amx = (read_xcr0() & (3u << 17)) == (3u << 17);  // XTILECFG + XTILEDATA
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512bf16 = (a >> 5) & 1;
  }
  unsigned ext = __get_cpuid_max(0x80000000u, nullptr);
  if (ext >= 0x80000004u) {
    char brand[49] = {0};
    for (unsigned i = 0; i < 3; i++) {
      __get_cpuid(0x80000002u + i, &a, &b, &c, &d);
      memcpy(brand + 16 * i, &a, 4); memcpy(brand + 16 * i + 4, &b, 4);
      memcpy(brand + 16 * i + 8, &c, 4); memcpy(brand + 16 * i + 12, &d, 4);
    }
    f.brand = brand;
    while (!f.brand.empty() && f.brand.back() == ' ') f.brand.pop_back();
  }
  return f;
}

Tier compute_best() {
  const CpuFeatures& f = cpu_features();
  if (f.os_zmm && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma && f.f16c && f.avx2 &&
      f.bmi2)
    return Tier::Avx512;
  if (f.os_ymm && f.avx2 && f.fma && f.f16c) return Tier::Avx2;
  return Tier::Ref;
}

Tier initial_tier() {
  Tier t = best_supported_tier();
  const char* env = getenv("QUANTFORM_KERNELS");
  Tier forced;
  // An unknown or unsupported value is ignored here; backendInfo() reports it.
  if (env && parse_tier(env, &forced) && tier_supported(forced)) t = forced;
  return t;
}

std::atomic<int>& tier_slot() {
  static std::atomic<int> slot{(int)initial_tier()};
  return slot;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

Tier best_supported_tier() {
  static const Tier t = compute_best();
  return t;
}

bool tier_supported(Tier t) { return (int)t <= (int)best_supported_tier(); }
Tier active_tier() { return (Tier)tier_slot().load(std::memory_order_relaxed); }

const char* tier_name(Tier t) {
  switch (t) {
    case Tier::Avx512: return "avx512";
    case Tier::Avx2: return "avx2";
    default: return "ref";
  }
}

bool parse_tier(const std::string& s, Tier* out) {
  if (s == "ref") { *out = Tier::Ref; return true; }
  if (s == "avx2") { *out = Tier::Avx2; return true; }
  if (s == "avx512") { *out = Tier::Avx512; return true; }
  return false;
}

bool set_kernel_policy(Tier t) {
  if (!tier_supported(t)) return false;
  tier_slot().store((int)t, std::memory_order_relaxed);
  return true;
}

bool vnni_available() {
  return active_tier() == Tier::Avx512 && cpu_features().avx512vnni;
}

bool bf16_available() { return active_tier() == Tier::Avx512 && cpu_features().avx512bf16; }

namespace {

// Linux hands out the 8 KB of AMX tile state per process on request (kernel >= 5.16):
// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA). Asked once; the answer is kept.
std::string request_amx() {
  const CpuFeatures& f = cpu_features();
  if (!f.amx_tile || !f.amx_bf16) return "the CPU has no AMX tiles with BF16";
  if (!f.avx512bf16) return "the CPU has AMX but no AVX-512 BF16 (needed to build the tiles)";
  if (!f.os_amx) return "the OS does not enable the AMX tile state (XCR0)";
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
    return std::string("Linux refused the AMX tile permission (arch_prctl: ") + strerror(errno) + ")";
  return "";
#else
  return "AMX is only requested on Linux";
#endif
}

const std::string& amx_grant() {
  static const std::string why = request_amx();
  return why;
}

std::atomic<bool>& amx_switch() {
  static std::atomic<bool> on{[] {
    const char* env = getenv("QUANTFORM_AMX");
    return !(env && strcmp(env, "0") == 0);
  }()};
  return on;
}

}  // namespace

bool amx_available() { return bf16_available() && amx_switch().load(std::memory_order_relaxed) && amx_grant().empty(); }

bool amx_int8_available() { return amx_available() && vnni_available() && cpu_features().amx_int8; }

std::string amx_status() {
  if (!amx_grant().empty()) return amx_grant();
  if (!amx_switch().load()) return "turned off (setAmx(false) or QUANTFORM_AMX=0)";
  if (active_tier() != Tier::Avx512) return std::string("the kernel policy is ") + tier_name(active_tier());
  return "";
}

void set_amx_enabled(bool on) { amx_switch().store(on, std::memory_order_relaxed); }

const QuantKernels& quant_kernels() {
  return select_kernels(quant_kernels_ref, quant_kernels_avx2, quant_kernels_avx512);
}

namespace {
// A tier's engine table with the entries it leaves null taken from the reference.
EngineKernels resolve(const EngineKernels& tier) {
  EngineKernels k = tier;
#define QF_FILL_FROM_REF(name, sig) \
  if (!k.name) k.name = engine_kernels_ref.name;
  QF_ENGINE_KERNELS(QF_FILL_FROM_REF)
#undef QF_FILL_FROM_REF
  return k;
}

const EngineKernels& raw_engine_table(Tier t) {
  switch (t) {
    case Tier::Avx512: return engine_kernels_avx512;
    case Tier::Avx2: return engine_kernels_avx2;
    default: return engine_kernels_ref;
  }
}
}  // namespace

const EngineKernels& engine_kernels() {
  // copying pointers runs no tier code, so all three resolve on any CPU
  static const EngineKernels ref = resolve(engine_kernels_ref), avx2 = resolve(engine_kernels_avx2),
                             avx512 = resolve(engine_kernels_avx512);
  return select_kernels(ref, avx2, avx512);
}

std::vector<KernelImpl> engine_kernel_impls(Tier t) {
  const EngineKernels& k = raw_engine_table(t);
  std::vector<KernelImpl> out;
#define QF_REPORT_IMPL(name, sig) out.push_back(KernelImpl{#name, k.name ? tier_name(t) : tier_name(Tier::Ref)});
  QF_ENGINE_KERNELS(QF_REPORT_IMPL)
#undef QF_REPORT_IMPL
  return out;
}

const MatmulKernels& matmul_kernels() {
  return select_kernels(matmul_kernels_ref, matmul_kernels_avx2, matmul_kernels_avx512);
}

const ProbeKernels& probe_kernels() {
  return select_kernels(probe_kernels_ref, probe_kernels_avx2, probe_kernels_avx512);
}

const MatmulInt8Kernels& matmul_int8_kernels() {
  if (amx_int8_available()) return matmul_int8_kernels_amx_avx512bf16;
  return vnni_available() ? matmul_int8_kernels_avx512vnni : matmul_int8_kernels_ref;
}

const MatmulSplitKernels& matmul_split_kernels() {
  return vnni_available() ? matmul_split_kernels_avx512vnni : matmul_split_kernels_ref;
}

const MatmulBf16Kernels* matmul_bf16_kernels() {
  if (active_tier() == Tier::Ref) return &matmul_bf16_kernels_ref;
  if (amx_available()) return &matmul_bf16_kernels_amx_avx512bf16;
  if (bf16_available()) return &matmul_bf16_kernels_avx512bf16;
  return nullptr;
}

}  // namespace qf
