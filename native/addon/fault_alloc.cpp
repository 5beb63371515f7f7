// Fault injection for tests: QUANTFORM_FAULT_ALLOC=N (read once, at load) makes the
// N-th C++ allocation of the addon throw std::bad_alloc (0: armed by faultAlloc()
// only), so tests can prove that every allocation of every op, on the calling
// thread, a pool worker or a libuv worker, ends in a QuantformError and leaves the
// process working. Without the variable, faultAlloc is not exported and the cost is
// one relaxed load per allocation.
//
// Why a replacement of the global operator new in the shipped addon rather than a
// test-only build: the tests exercise the exact binary users get, and CI needs no
// third build. The replacement stays inside the addon: every symbol but Node's two
// entry points is local (cmake/exports.map, -fvisibility=hidden), so the addon's
// references bind to these definitions and nothing outside sees them
// (test/fault-injection.test.ts checks the dynamic symbol table).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>

#include "napi_util.h"

namespace {

std::atomic<bool> g_enabled{false};
std::atomic<int64_t> g_count{0};    // allocations since the last arm
std::atomic<int64_t> g_fail_at{0};  // 1-based index of the allocation to fail; 0: none

bool inject_failure() {
  if (!g_enabled.load(std::memory_order_relaxed)) return false;
  const int64_t c = g_count.fetch_add(1, std::memory_order_relaxed) + 1;
  int64_t at = c;
  return g_fail_at.compare_exchange_strong(at, 0, std::memory_order_relaxed);
}

struct ReadEnv {
  ReadEnv() {
    const char* v = std::getenv("QUANTFORM_FAULT_ALLOC");
    if (!v || !*v) return;
    char* end = nullptr;
    const long long n = std::strtoll(v, &end, 10);
    g_fail_at.store(end && *end == 0 && n > 0 ? n : 0, std::memory_order_relaxed);
    g_enabled.store(true, std::memory_order_relaxed);
  }
} g_read_env;

void* allocate(std::size_t n) {
  if (inject_failure()) throw std::bad_alloc();
  if (n == 0) n = 1;
  for (;;) {
    if (void* p = std::malloc(n)) return p;
    std::new_handler h = std::get_new_handler();
    if (!h) throw std::bad_alloc();
    h();
  }
}

void* allocate_aligned(std::size_t n, std::align_val_t a) {
  if (inject_failure()) throw std::bad_alloc();
  const std::size_t al = std::max(sizeof(void*), static_cast<std::size_t>(a));
  if (n == 0) n = 1;
  for (;;) {
    void* p = nullptr;
    if (posix_memalign(&p, al, n) == 0) return p;
    std::new_handler h = std::get_new_handler();
    if (!h) throw std::bad_alloc();
    h();
  }
}

}  // namespace

void* operator new(std::size_t n) { return allocate(n); }
void* operator new[](std::size_t n) { return allocate(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return allocate(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return allocate(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new(std::size_t n, std::align_val_t a) { return allocate_aligned(n, a); }
void* operator new[](std::size_t n, std::align_val_t a) { return allocate_aligned(n, a); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return allocate_aligned(n, a);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return allocate_aligned(n, a);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

namespace qf {
namespace {

// faultAlloc(n) -> allocations counted since the previous call; then the n-th
// allocation from now fails (n = 0: none).
Napi::Value fault_alloc_js(const Napi::CallbackInfo& info) {
  const int64_t n = arg_int(info, 0, "n");
  if (n < 0) throw ArgError{error(Code::InvalidArgument, "Expected non-negative integer for n but received " + std::to_string(n))};
  g_fail_at.store(0, std::memory_order_relaxed);
  const int64_t seen = g_count.exchange(0, std::memory_order_relaxed);
  g_fail_at.store(n, std::memory_order_relaxed);
  return Napi::Number::New(info.Env(), (double)seen);
}

}  // namespace

void register_fault(Napi::Env env, Napi::Object exports) {
  if (g_enabled.load(std::memory_order_relaxed)) QF_EXPORT(exports, "faultAlloc", fault_alloc_js);
}

}  // namespace qf
