// Status codes shared by the CPU addon, the CUDA addon and the TS error mapping
// (lib/errors.ts keeps the same names). Native code never exits or aborts: every
// failure travels back as a Status and becomes a JS error with a `code`.
#pragma once
#include <string>
#include <utility>

namespace qf {

enum class Code : int {
  Ok = 0,
  InvalidArgument,   // a value out of its documented domain (bits, groupSize, ...)
  ShapeMismatch,     // lengths or shapes that contradict each other
  DtypeMismatch,     // wrong element type
  UnsupportedBits,   // bit width outside {2, 3, 4, 8}
  NonFinite,         // NaN or Inf where finite numbers are required
  OutOfMemory,
  Io,                // file system errors
  CorruptFile,       // a file whose contents contradict its own header
  Cuda,              // CUDA runtime / driver errors
  Unsupported,       // a feature this build or machine does not have
  Internal,
};

// Names as they appear in JS (`err.code`).
const char* code_name(Code c);

struct Status {
  Code code = Code::Ok;
  std::string message;
  bool ok() const { return code == Code::Ok; }
  static Status Ok() { return {}; }
};

inline Status error(Code c, std::string msg) { return Status{c, std::move(msg)}; }

}  // namespace qf

// Returns the Status of `expr` from the enclosing function when it is not Ok.
#define QF_TRY(expr)                  \
  do {                                \
    ::qf::Status qf_st_ = (expr);     \
    if (!qf_st_.ok()) return qf_st_;  \
  } while (0)

namespace qf {

}  // namespace qf
