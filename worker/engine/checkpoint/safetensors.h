// safetensors reading and atomic writing: the on-disk tensor format shared with Hugging Face.
//
// Layout: an 8-byte little-endian u64 header length N, N bytes of JSON
//   {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}
// then the byte buffer; offsets are relative to the buffer start. The writer pads the header with
// spaces so the buffer starts 8-byte aligned and lays tensors out back to back, which is what the
// reference (Rust) implementation demands of the files it loads.
//
// The reader treats files as untrusted input: every malformed file yields an error naming the
// file and, where there is one, the tensor, and never a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/file_io.h"  // WriteFileAtomically, SyncDirectory

namespace raptr {

// Bytes per element of a safetensors dtype ("F32", "I64", "BF16", ...), or 0 if unknown.
// Known: BOOL U8 I8 F8_E5M2 F8_E4M3 I16 U16 F16 BF16 I32 U32 F32 I64 U64 F64.
size_t SafetensorsDtypeSize(std::string_view dtype);

// A tensor to write; `data` holds product(shape) elements of `dtype`, in the host's (little)
// endianness. A scalar has an empty shape.
struct TensorView {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// Writes `tensors` in the given order. Atomic: writes `path.tmp`, fsyncs it, renames it over
// `path` and fsyncs the directory, so `path` is always either the old file or the complete new
// one. The name "__metadata__" is reserved.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorView>& tensors,
                              const std::map<std::string, std::string>& metadata);

// A whole safetensors file held in memory, validated on load. Move-only: entries point into the
// owned buffer.
class SafetensorsFile {
 public:
  struct Entry {
    std::string name;
    std::string dtype;
    std::vector<int64_t> shape;
    // The raw bytes. Only as aligned as the file made them (files written elsewhere need not
    // align tensors), so read typed values with memcpy, not by casting the pointer.
    const uint8_t* data = nullptr;
    size_t nbytes = 0;

    int64_t numel() const;
  };

  SafetensorsFile() = default;
  SafetensorsFile(SafetensorsFile&&) = default;
  SafetensorsFile& operator=(SafetensorsFile&&) = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // The path it was read from (for error messages).
  const std::string& path() const { return path_; }
  // Tensor names, sorted.
  std::vector<std::string> names() const;
  size_t size() const { return entries_.size(); }
  // The tensor with this name, or nullptr.
  const Entry* Find(const std::string& name) const;
  // The "__metadata__" map (empty if the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  friend absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string path,
                                                          std::vector<uint64_t> storage,
                                                          size_t size);

  std::string path_;
  // The file's bytes; u64 elements so the buffer starts 8-byte aligned.
  std::vector<uint64_t> storage_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Reads and validates a whole file: header length within the file and at most 100 MB, valid JSON
// object, every tensor with a known dtype, non-negative dims, in-bounds non-overlapping
// data_offsets whose size equals product(shape) * dtype size, no duplicate names, string-valued
// metadata.
absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path);

// Validates and indexes `size` bytes held in `storage` (which must hold at least `size` bytes);
// `path` only names the source in errors. ReadSafetensors is this over the file's contents.
absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string path, std::vector<uint64_t> storage,
                                                 size_t size);

}  // namespace raptr
