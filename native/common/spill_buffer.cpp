#include "quantform/spill_buffer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "quantform/convert.h"

namespace qf {

Status SpillBuffer::create(int64_t elements, DType dtype, int64_t mem_elements, const std::string& dir,
                           std::unique_ptr<SpillBuffer>* out) {
  if (dtype != DType::F32 && dtype != DType::BF16)
    return error(Code::DtypeMismatch, std::string("Expected 'f32' or 'bf16' for the activation store dtype but received '") +
                                          dtype_name(dtype) + "'");
  if (elements <= 0 || elements > (int64_t(1) << 60) / 4 || mem_elements < 0 || mem_elements > elements)
    return error(Code::InvalidArgument, "Expected 0 < elements < 2^58 and 0 <= memoryElements <= elements but received elements=" +
                                            std::to_string(elements) + ", memoryElements=" + std::to_string(mem_elements));
  std::unique_ptr<SpillBuffer> b(new SpillBuffer());
  b->elements_ = elements;
  b->mem_elements_ = mem_elements;
  b->dtype_ = dtype;
  b->esize_ = dtype_size(dtype);
  if (mem_elements > 0) {
    // page-aligned and rounded to whole pages (aligned_alloc wants a multiple of the alignment)
    const size_t bytes = ((size_t)mem_elements * b->esize_ + 4095) / 4096 * 4096;
    b->mem_ = static_cast<uint8_t*>(aligned_alloc(4096, bytes));
    if (!b->mem_) return error(Code::OutOfMemory, "SpillBuffer: out of memory allocating " + std::to_string(bytes) + " bytes for the in-memory activations");
  }
  if (mem_elements < elements) {
    b->map_bytes_ = (size_t)(elements - mem_elements) * b->esize_;
    std::string tmpl = (dir.empty() ? std::string("/tmp") : dir) + "/quantform-activations-XXXXXX";
    std::vector<char> name(tmpl.begin(), tmpl.end());
    name.push_back('\0');
    b->fd_ = mkstemp(name.data());
    if (b->fd_ < 0) return error(Code::Io, "Cannot create a temporary file in " + dir + " for spilled activations: " + strerror(errno));
    b->path_ = name.data();
    unlink(name.data());  // gone from the directory now; the space is freed when the fd closes
    const int rc = posix_fallocate(b->fd_, 0, (off_t)b->map_bytes_);
    if (rc != 0)
      return error(Code::Io, "Cannot reserve " + std::to_string(b->map_bytes_) + " bytes in " + dir +
                                                           " for spilled activations: " + strerror(rc));
    void* p = mmap(nullptr, b->map_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, b->fd_, 0);
    if (p == MAP_FAILED) return error(Code::Io, "Cannot map " + std::to_string(b->map_bytes_) + " bytes of " + b->path_ + ": " + strerror(errno));
    b->map_ = static_cast<uint8_t*>(p);
  }
  *out = std::move(b);
  return Status::Ok();
}

SpillBuffer::~SpillBuffer() {
  if (map_) munmap(map_, map_bytes_);
  if (fd_ >= 0) close(fd_);
  free(mem_);
}

Status SpillBuffer::check_range(int64_t offset, int64_t n, const char* op) const {
  if (offset < 0 || n < 0 || offset > elements_ - n)
    return error(Code::InvalidArgument, std::string("Expected [offset, offset + n) inside [0, ") + std::to_string(elements_) +
                                            ") for the activation store " + op + " but received offset=" + std::to_string(offset) +
                                            ", n=" + std::to_string(n));
  return Status::Ok();
}

uint8_t* SpillBuffer::at(int64_t i) const {
  return i < mem_elements_ ? mem_ + (size_t)i * esize_ : map_ + (size_t)(i - mem_elements_) * esize_;
}

void SpillBuffer::release_file_pages(int64_t begin, int64_t end) const {
  begin = std::max(begin, mem_elements_) - mem_elements_;
  end = std::max(end, mem_elements_) - mem_elements_;
  // whole pages inside the range only: a page shared with a neighbour may still be in use
  const size_t b = ((size_t)begin * esize_ + 4095) / 4096 * 4096, e = (size_t)end * esize_ / 4096 * 4096;
  if (e > b) madvise(map_ + b, e - b, MADV_DONTNEED);
}

Status SpillBuffer::write(int64_t offset, const float* src, int64_t n) {
  Status st = check_range(offset, n, "write");
  if (!st.ok()) return st;
  // the RAM/file boundary splits at most once
  for (int64_t i = offset; i < offset + n;) {
    const int64_t stop = i < mem_elements_ ? std::min(offset + n, mem_elements_) : offset + n;
    const Span from{(void*)(src + (i - offset)), (size_t)(stop - i), DType::F32};
    if (dtype_ == DType::F32) memcpy(at(i), from.data, (size_t)(stop - i) * 4);
    else {
      st = convert_span(Span{at(i), (size_t)(stop - i), DType::BF16}, from);
      if (!st.ok()) return st;
    }
    i = stop;
  }
  release_file_pages(offset, offset + n);
  return Status::Ok();
}

Status SpillBuffer::read(int64_t offset, float* dst, int64_t n) {
  Status st = check_range(offset, n, "read");
  if (!st.ok()) return st;
  for (int64_t i = offset; i < offset + n;) {
    const int64_t stop = i < mem_elements_ ? std::min(offset + n, mem_elements_) : offset + n;
    float* to = dst + (i - offset);
    if (dtype_ == DType::F32) memcpy(to, at(i), (size_t)(stop - i) * 4);
    else {
      st = convert_span(Span{to, (size_t)(stop - i), DType::F32}, Span{at(i), (size_t)(stop - i), DType::BF16});
      if (!st.ok()) return st;
    }
    i = stop;
  }
  release_file_pages(offset, offset + n);
  return Status::Ok();
}

}  // namespace qf
