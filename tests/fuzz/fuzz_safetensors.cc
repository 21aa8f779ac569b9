// libFuzzer target: the safetensors reader (worker/engine/checkpoint/safetensors.h), fuzzed
// through its in-memory entry point ParseSafetensors (ReadSafetensors is that over a file).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "worker/engine/checkpoint/safetensors.h"

namespace {

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_safetensors: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint64_t> storage((size + 7) / 8);
  if (size > 0) std::memcpy(storage.data(), data, size);
  absl::StatusOr<raptr::SafetensorsFile> file =
      raptr::ParseSafetensors("fuzz-input", std::move(storage), size);
  if (!file.ok()) return 0;

  // Accepted: every entry must be what the header promised and lie inside the input, which
  // reading each byte checks under ASan (the entries point into the file's own buffer).
  uint8_t checksum = 0;
  for (const std::string& name : file->names()) {
    const raptr::SafetensorsFile::Entry* e = file->Find(name);
    if (e == nullptr) Fail("names() lists '" + name + "' but Find() has no such tensor");
    const size_t dsize = raptr::SafetensorsDtypeSize(e->dtype);
    if (dsize == 0) Fail("tensor '" + name + "' accepted with unknown dtype " + e->dtype);
    const int64_t numel = e->numel();
    if (numel < 0 || static_cast<uint64_t>(numel) * dsize != e->nbytes) {
      Fail("tensor '" + name + "': numel * dtype size != nbytes");
    }
    if (e->nbytes > size) Fail("tensor '" + name + "' is larger than the input");
    for (size_t i = 0; i < e->nbytes; ++i) checksum ^= e->data[i];
  }
  for (const auto& [key, value] : file->metadata()) checksum ^= key.empty() ? 0 : key[0];
  // Keep the loop from being optimised away.
  volatile uint8_t sink = checksum;
  (void)sink;
  return 0;
}
