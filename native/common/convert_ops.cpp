// Tier selection for the conversion table, and the checkpoint reader built on it:
// positional reads into per-thread staging buffers the size of L2, widened from
// there into the destination while the bytes are still in cache.
#include "quantform/convert.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "quantform/dispatch.h"
#include "quantform/threadpool.h"

namespace qf {

const ConvertKernels& convert_kernels() {
  return select_kernels(convert_kernels_ref, convert_kernels_avx2, convert_kernels_avx512);
}

namespace {

// Bytes per positional read: large enough that the syscall is noise next to the
// copy (~100 us per MiB from the page cache), small enough to stay in L2.
constexpr int64_t kChunkBytes = int64_t(1) << 20;

// The first error of a parallel region; workers never throw (the pool would not carry it).
class FirstError {
 public:
  // true when st is ok; otherwise keeps the first failure (the message is built
  // only on failure, so a bad_alloc there is caught here, not on the pool)
  bool ok_or_record(Status&& st) noexcept {
    if (st.ok()) return true;
    failed_.store(true, std::memory_order_relaxed);
    try {
      std::lock_guard<std::mutex> lk(mu_);
      if (st_.ok()) st_ = std::move(st);
    } catch (...) {
    }
    return false;
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  void fail() noexcept { failed_.store(true, std::memory_order_relaxed); }
  // a worker that failed without a message ran out of memory building it
  Status take() { return st_.ok() ? error(Code::OutOfMemory, "read_tensor: out of memory while reporting a read error") : std::move(st_); }

 private:
  std::mutex mu_;
  Status st_;
  std::atomic<bool> failed_{false};
};

// pread until `n` bytes arrived; a short file is CorruptFile, an OS error Io.
Status pread_full(int fd, void* buf, int64_t n, int64_t offset, const char* what) {
  uint8_t* p = static_cast<uint8_t*>(buf);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, (size_t)n, (off_t)offset);
    if (r < 0) {
      if (errno == EINTR) continue;
      return error(Code::Io, std::string("Cannot read ") + what + " at byte " + std::to_string(offset) + ": " + strerror(errno));
    }
    if (r == 0)
      return error(Code::CorruptFile, std::string("Unexpected end of file reading ") + what + " at byte " + std::to_string(offset));
    p += r;
    n -= r;
    offset += r;
  }
  return Status::Ok();
}

void widen(const ConvertKernels& k, DType src, float* dst, const void* s, int64_t n) {
  switch (src) {
    case DType::F16: k.f16_to_f32(dst, static_cast<const uint16_t*>(s), n); break;
    case DType::BF16: k.bf16_to_f32(dst, static_cast<const uint16_t*>(s), n); break;
    default: memcpy(dst, s, (size_t)n * 4); break;
  }
}

}  // namespace

Status check_tensor_range(int fd, int64_t offset, DType src, int64_t rows, int64_t cols, const char* what) {
  const std::string name = what ? what : "tensor";
  // offset < 2^62 too: offset + rows*cols*esize must not overflow either
  if (rows < 0 || cols < 0 || offset < 0 || offset > (int64_t(1) << 62) || (cols > 0 && rows > (int64_t(1) << 62) / 4 / cols))
    return error(Code::InvalidArgument, "Expected non-negative offset, rows and cols with rows*cols*4 < 2^62 for " + name +
                                            " but received offset=" + std::to_string(offset) + ", rows=" +
                                            std::to_string(rows) + ", cols=" + std::to_string(cols));
  const int64_t total = rows * cols, esz = (int64_t)dtype_size(src);
  struct stat sb;
  if (fstat(fd, &sb) != 0) return error(Code::Io, "Cannot stat the file of " + name + ": " + strerror(errno));
  if (offset + total * esz > (int64_t)sb.st_size)
    return error(Code::CorruptFile, name + " spans bytes [" + std::to_string(offset) + ", " + std::to_string(offset + total * esz) +
                                        ") but the file has " + std::to_string((int64_t)sb.st_size) + " bytes");
  return Status::Ok();
}

Status read_tensor_f32(int fd, int64_t offset, DType src, int64_t rows, int64_t cols, const int32_t* dst_row,
                       size_t dst_row_len, float* dst, size_t dst_len, const char* what) {
  const std::string name = what ? what : "tensor";
  QF_TRY(check_tensor_range(fd, offset, src, rows, cols, what));
  const int64_t total = rows * cols;
  const int64_t esz = (int64_t)dtype_size(src);
  if ((int64_t)dst_len != total)
    return error(Code::ShapeMismatch, "Expected a destination of " + std::to_string(total) + " floats for " + name +
                                          " (" + std::to_string(rows) + ", " + std::to_string(cols) + ") but received " +
                                          std::to_string(dst_len));
  if (dst_row) {
    if ((int64_t)dst_row_len != rows)
      return error(Code::ShapeMismatch, "Expected " + std::to_string(rows) + " row indices for " + name + " but received " +
                                            std::to_string(dst_row_len));
    std::vector<bool> seen((size_t)rows, false);
    for (int64_t s = 0; s < rows; s++) {
      const int32_t d = dst_row[s];
      if (d < 0 || d >= rows || seen[(size_t)d])
        return error(Code::InvalidArgument, "Expected a permutation of [0, " + std::to_string(rows) + ") for the rows of " +
                                                name + " but entry " + std::to_string(s) + " is " + std::to_string(d) +
                                                (d >= 0 && d < rows ? " (repeated)" : ""));
      seen[(size_t)d] = true;
    }
  }
  if (total == 0) return Status::Ok();
  // A chunk is `per` units: elements when the rows stay in order, rows when they
  // are permuted (read in file order, each scattered to its destination row).
  const ConvertKernels& k = convert_kernels();
  const int64_t unit = dst_row ? cols : 1;  // elements per unit
  const int64_t units = dst_row ? rows : total;
  const int64_t per = std::max<int64_t>(1, kChunkBytes / (unit * esz));
  const int64_t chunks = (units + per - 1) / per;
  const bool direct = src == DType::F32 && !dst_row;  // f32 in file order lands in place
  const size_t slot_bytes = (size_t)(std::min(per, units) * unit * esz);
  const int threads = (int)std::min<int64_t>(num_threads(), chunks);
  // (threads, slot_bytes), reused across calls by the calling thread: a fresh
  // buffer per tensor would fault its pages in again for every small tensor
  thread_local std::vector<uint8_t> staging;
  if (!direct && staging.size() < (size_t)threads * slot_bytes) staging.resize((size_t)threads * slot_bytes);
  uint8_t* const stage = staging.data();  // the workers' own thread_local copies are empty: pass the caller's
  std::atomic<int> slots{0};
  FirstError err;
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    try {
      // the pool makes at most num_threads() calls per job: one slot each
      uint8_t* buf = direct ? nullptr : stage + (size_t)(slots.fetch_add(1) % threads) * slot_bytes;
      for (int64_t c = c0; c < c1 && !err.failed(); c++) {
        const int64_t u0 = c * per, n = std::min(per, units - u0);
        void* to = direct ? (void*)(dst + u0) : (void*)buf;
        if (!err.ok_or_record(pread_full(fd, to, n * unit * esz, offset + u0 * unit * esz, name.c_str()))) return;
        if (direct) continue;
        if (!dst_row) widen(k, src, dst + u0, buf, n);
        else
          for (int64_t r = 0; r < n; r++) widen(k, src, dst + (int64_t)dst_row[u0 + r] * cols, buf + r * cols * esz, cols);
      }
    } catch (...) {  // an error message that could not be built must not reach the pool
      err.fail();
    }
  });
  if (err.failed()) return err.take();
  return Status::Ok();
}

Status convert_span(Span dst, Span src) {
  if (dst.len != src.len)
    return error(Code::ShapeMismatch, "Expected source and destination of equal length but received " + std::to_string(src.len) +
                                          " and " + std::to_string(dst.len));
  const bool narrow = src.dtype == DType::F32 && dst.dtype == DType::BF16;
  const bool wide = dst.dtype == DType::F32 && (src.dtype == DType::F16 || src.dtype == DType::BF16);
  if (!narrow && !wide)
    return error(Code::Unsupported, std::string("Conversion from ") + dtype_name(src.dtype) + " to " + dtype_name(dst.dtype) +
                                        " is not supported (f32 -> bf16, f16 -> f32, bf16 -> f32)");
  const ConvertKernels& k = convert_kernels();
  constexpr int64_t kGrain = 1 << 16;  // elements: below this a thread wake-up costs more than it saves
  parallel_for((int64_t)src.len, kGrain, [&](int64_t b, int64_t e) {
    if (narrow) k.f32_to_bf16(static_cast<uint16_t*>(dst.data) + b, static_cast<const float*>(src.data) + b, e - b);
    else widen(k, src.dtype, static_cast<float*>(dst.data) + b, static_cast<const uint16_t*>(src.data) + b, e - b);
  });
  return Status::Ok();
}

}  // namespace qf
