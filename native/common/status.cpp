#include "quantform/status.h"

namespace qf {

const char* code_name(Code c) {
  switch (c) {
    case Code::Ok: return "QF_OK";
    case Code::InvalidArgument: return "QF_INVALID_ARGUMENT";
    case Code::ShapeMismatch: return "QF_SHAPE_MISMATCH";
    case Code::DtypeMismatch: return "QF_DTYPE_MISMATCH";
    case Code::UnsupportedBits: return "QF_UNSUPPORTED_BITS";
    case Code::NonFinite: return "QF_NON_FINITE";
    case Code::OutOfMemory: return "QF_OUT_OF_MEMORY";
    case Code::Io: return "QF_IO";
    case Code::CorruptFile: return "QF_CORRUPT_FILE";
    case Code::Cuda: return "QF_CUDA";
    case Code::Unsupported: return "QF_UNSUPPORTED";
    case Code::Internal: return "QF_INTERNAL";
  }
  return "QF_INTERNAL";
}

}  // namespace qf
