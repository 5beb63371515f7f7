// A large f32-or-bf16 array (calibration activations: samples x tokens x hidden)
// that lives in RAM up to a budget and in a memory-mapped temporary file beyond
// it. The file is unlinked as soon as it is created and space for it reserved
// (posix_fallocate), so it disappears however the process ends (success, error,
// Ctrl-C, kill) and a full disk is an error at creation, never a SIGBUS later.
// After every access to the file part its pages are dropped from the process
// (madvise DONTNEED: the data stays in the page cache / file), so the resident
// set stays near the budget.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "quantform/quant_ops.h"
#include "quantform/status.h"

namespace qf {

class SpillBuffer {
 public:
  // `elements` of `dtype` (F32 or BF16); elements [0, mem_elements) in RAM, the rest
  // in a temporary file created in `dir`.
  static Status create(int64_t elements, DType dtype, int64_t mem_elements, const std::string& dir,
                       std::unique_ptr<SpillBuffer>* out);
  ~SpillBuffer();
  SpillBuffer(const SpillBuffer&) = delete;
  SpillBuffer& operator=(const SpillBuffer&) = delete;

  // elements [offset, offset + n) <- src (n) f32 (rounded to nearest even for bf16)
  Status write(int64_t offset, const float* src, int64_t n);
  // dst (n) f32 <- elements [offset, offset + n)
  Status read(int64_t offset, float* dst, int64_t n);

  int64_t elements() const { return elements_; }
  int64_t memory_elements() const { return mem_elements_; }
  DType dtype() const { return dtype_; }
  // where the spilled part was created (already unlinked); empty when all in RAM
  const std::string& file_path() const { return path_; }

 private:
  SpillBuffer() = default;
  Status check_range(int64_t offset, int64_t n, const char* op) const;
  // pointer to element i of the RAM part or the mapping
  uint8_t* at(int64_t i) const;
  void release_file_pages(int64_t begin, int64_t end) const;

  int64_t elements_ = 0, mem_elements_ = 0;
  DType dtype_ = DType::F32;
  size_t esize_ = 4;
  uint8_t* mem_ = nullptr;   // (mem_elements) elements
  uint8_t* map_ = nullptr;   // (elements - mem_elements) elements, file-backed
  size_t map_bytes_ = 0;
  int fd_ = -1;
  std::string path_;
};

}  // namespace qf
