// safetensors reading, validation and atomic writing (see safetensors.h).
#include "worker/engine/checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_io.h"
#include "nlohmann/json.hpp"

namespace raptr {
namespace {

using Json = nlohmann::json;

// Tensor bytes are copied raw; safetensors is little-endian on disk.
static_assert(std::endian::native == std::endian::little,
              "safetensors I/O assumes a little-endian host");

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// Our headers nest three deep (root, tensor, shape); the cap only stops hostile inputs from
// building absurdly deep documents.
constexpr int kMaxJsonDepth = 64;
constexpr char kMetadataKey[] = "__metadata__";

// Rejects strings nlohmann::json could not serialize (it would throw on invalid UTF-8).
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong encodings, surrogates and out-of-range code points are invalid too.
    static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// Multiplies the dims, failing on negative dims or overflow past `limit`.
bool CheckedNumel(const std::vector<int64_t>& shape, uint64_t limit, uint64_t* numel) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n) || n > limit) return false;
  }
  *numel = n;
  return true;
}

// Builds a DOM from SAX events, like nlohmann's own DOM parser, but also rejects duplicate object
// keys (the stock parser silently keeps the last) and excessive nesting, and reports syntax
// errors as text instead of exceptions.
class CheckedDomBuilder {
 public:
  Json& root() { return root_; }
  const std::string& error() const { return error_; }

  bool null() { return Add(Json(nullptr)) != nullptr; }
  bool boolean(bool v) { return Add(Json(v)) != nullptr; }
  bool number_integer(Json::number_integer_t v) { return Add(Json(v)) != nullptr; }
  bool number_unsigned(Json::number_unsigned_t v) { return Add(Json(v)) != nullptr; }
  bool number_float(Json::number_float_t v, const Json::string_t& /*text*/) {
    return Add(Json(v)) != nullptr;
  }
  bool string(Json::string_t& v) { return Add(Json(std::move(v))) != nullptr; }
  bool binary(Json::binary_t& /*v*/) {
    error_ = "unexpected binary value";
    return false;
  }
  bool start_object(std::size_t /*elements*/) { return Open(Json::object()); }
  bool key(Json::string_t& k) {
    if (stack_.back()->contains(k)) {
      error_ = stack_.size() == 1
                   ? absl::StrCat("duplicate tensor name '", k, "'")
                   : absl::StrCat("tensor '", top_key_, "': duplicate key '", k, "'");
      return false;
    }
    if (stack_.size() == 1) top_key_ = k;
    key_ = std::move(k);
    return true;
  }
  bool end_object() {
    stack_.pop_back();
    return true;
  }
  bool start_array(std::size_t /*elements*/) { return Open(Json::array()); }
  bool end_array() {
    stack_.pop_back();
    return true;
  }
  // nlohmann's message quotes the text it choked on ("last read: '...'"): bytes of a file that
  // may be no safetensors file at all. Only the offset is kept (see ParseSafetensors).
  bool parse_error(std::size_t position, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& /*ex*/) {
    error_ = absl::StrCat("not valid JSON (syntax error at byte ", position, " of the header)");
    return false;
  }

 private:
  // Places a value where the parser is: the root, the next array element, or the pending key.
  Json* Add(Json v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    Json* top = stack_.back();
    if (top->is_array()) {
      top->push_back(std::move(v));
      return &top->back();
    }
    Json& slot = (*top)[key_];
    slot = std::move(v);
    return &slot;
  }
  bool Open(Json container) {
    if (static_cast<int>(stack_.size()) >= kMaxJsonDepth) {
      error_ = absl::StrCat("JSON nested deeper than ", kMaxJsonDepth, " levels");
      return false;
    }
    // Pointers stay valid: a parent container gains no element while its child is open.
    stack_.push_back(Add(std::move(container)));
    return true;
  }

  Json root_;
  std::vector<Json*> stack_;
  std::string key_;
  std::string top_key_;  // the tensor (or __metadata__) being parsed, for error messages
  std::string error_;
};

// Reads a non-negative JSON integer.
bool GetUnsigned(const Json& j, uint64_t* out) {
  if (!j.is_number_unsigned()) return false;
  *out = j.get<uint64_t>();
  return true;
}

}  // namespace

size_t SafetensorsDtypeSize(std::string_view dtype) {
  static const std::pair<std::string_view, size_t> kSizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8},
  };
  for (const auto& [name, size] : kSizes) {
    if (name == dtype) return size;
  }
  return 0;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorView>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  auto invalid = [&](const std::string& msg) {
    return absl::InvalidArgumentError(absl::StrCat("cannot write safetensors ", path, ": ", msg));
  };
  Json header = Json::object();
  std::vector<FileChunk> chunks(2);  // header length and header, filled in below
  uint64_t offset = 0;
  for (const TensorView& t : tensors) {
    const std::string where = absl::StrCat("tensor '", t.name, "'");
    if (t.name == kMetadataKey) return invalid(absl::StrCat(where, ": the name is reserved"));
    if (!IsValidUtf8(t.name)) return invalid(absl::StrCat(where, ": name is not valid UTF-8"));
    if (header.contains(t.name)) return invalid(absl::StrCat(where, ": duplicate name"));
    const size_t dsize = SafetensorsDtypeSize(t.dtype);
    if (dsize == 0) return invalid(absl::StrCat(where, ": unknown dtype '", t.dtype, "'"));
    uint64_t numel = 0;
    if (!CheckedNumel(t.shape, std::numeric_limits<uint64_t>::max() / dsize, &numel)) {
      return invalid(absl::StrCat(where, ": invalid shape [", absl::StrJoin(t.shape, ", "), "]"));
    }
    const uint64_t nbytes = numel * dsize;
    if (nbytes > 0 && t.data == nullptr) return invalid(absl::StrCat(where, ": data is null"));
    if (__builtin_add_overflow(offset, nbytes, &offset)) {
      return invalid("total tensor bytes overflow");
    }
    header[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset - nbytes, offset}}};
    if (nbytes > 0) chunks.push_back({t.data, static_cast<size_t>(nbytes)});
  }
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [k, v] : metadata) {
      if (!IsValidUtf8(k) || !IsValidUtf8(v)) {
        return invalid(absl::StrCat("metadata key '", k, "': key or value is not valid UTF-8"));
      }
      meta[k] = v;
    }
    header[kMetadataKey] = std::move(meta);
  }
  std::string text = header.dump();
  // Space padding keeps the byte buffer, and so every F32/F64 tensor we lay out, 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();
  chunks[0] = {&header_len, sizeof(header_len)};
  chunks[1] = {text.data(), text.size()};
  return WriteChunksAtomically(path, chunks);
}

int64_t SafetensorsFile::Entry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) out.push_back(name);
  return out;
}

const SafetensorsFile::Entry* SafetensorsFile::Find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string path, std::vector<uint64_t> storage,
                                                 size_t size) {
  // Until the header has parsed as a JSON object, the bytes may be any file's (a path that is
  // no checkpoint): errors name sizes and limits, never a value read (the length field, the
  // text). After that, the header's structure (tensor names, dtypes, shapes, offsets) is named:
  // it is what a wrong checkpoint is told apart by, and only a safetensors file has one.
  auto bad = [&](const std::string& msg) {
    return absl::DataLossError(absl::StrCat("invalid safetensors file ", path, ": ", msg));
  };
  if (storage.size() * sizeof(uint64_t) < size) return bad("internal: storage smaller than size");
  const auto* bytes = reinterpret_cast<const uint8_t*>(storage.data());
  if (size < 8) {
    return bad(absl::StrCat("file is ", size, " bytes, shorter than the 8-byte header length"));
  }
  uint64_t header_len;
  std::memcpy(&header_len, bytes, sizeof(header_len));
  if (header_len > kMaxHeaderBytes) {
    return bad(
        absl::StrCat("the header length field exceeds the ", kMaxHeaderBytes, "-byte limit"));
  }
  if (header_len > size - 8) {
    return bad(absl::StrCat("the header length field exceeds the ", size - 8, " bytes after it"));
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  CheckedDomBuilder builder;
  Json::sax_parse(header_begin, header_begin + header_len, &builder);
  if (!builder.error().empty()) return bad(absl::StrCat("header: ", builder.error()));
  const Json& root = builder.root();
  if (!root.is_object()) return bad("header is not a JSON object");

  SafetensorsFile file;
  const uint8_t* buffer = bytes + 8 + header_len;
  const uint64_t buffer_size = size - 8 - header_len;
  for (const auto& item : root.items()) {
    const std::string& name = item.key();  // not a structured binding: lambdas capture it
    const Json& value = item.value();
    if (name == kMetadataKey) {
      if (!value.is_object()) return bad("__metadata__ is not a JSON object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) return bad(absl::StrCat("__metadata__ '", k, "' is not a string"));
        file.metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    auto bad_tensor = [&](const std::string& msg) {
      return bad(absl::StrCat("tensor '", name, "': ", msg));
    };
    if (!value.is_object()) return bad_tensor("entry is not a JSON object");
    SafetensorsFile::Entry e;
    e.name = name;

    auto dtype_it = value.find("dtype");
    if (dtype_it == value.end()) return bad_tensor("missing 'dtype'");
    if (!dtype_it->is_string()) return bad_tensor("'dtype' is not a string");
    e.dtype = dtype_it->get<std::string>();
    const size_t dsize = SafetensorsDtypeSize(e.dtype);
    if (dsize == 0) return bad_tensor(absl::StrCat("unknown dtype '", e.dtype, "'"));

    auto shape_it = value.find("shape");
    if (shape_it == value.end()) return bad_tensor("missing 'shape'");
    if (!shape_it->is_array()) return bad_tensor("'shape' is not an array");
    for (const Json& d : *shape_it) {
      if (d.is_number_integer() && !d.is_number_unsigned()) {
        return bad_tensor(absl::StrCat("negative dimension ", d.get<int64_t>(), " in 'shape'"));
      }
      uint64_t dim;
      if (!GetUnsigned(d, &dim)) return bad_tensor("'shape' holds a non-integer");
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return bad_tensor(absl::StrCat("dimension ", dim, " is too large"));
      }
      e.shape.push_back(static_cast<int64_t>(dim));
    }

    auto off_it = value.find("data_offsets");
    if (off_it == value.end()) return bad_tensor("missing 'data_offsets'");
    uint64_t begin, end;
    if (!off_it->is_array() || off_it->size() != 2 || !GetUnsigned((*off_it)[0], &begin) ||
        !GetUnsigned((*off_it)[1], &end)) {
      return bad_tensor("'data_offsets' is not a pair of non-negative integers");
    }
    if (begin > end) {
      return bad_tensor(absl::StrCat("data_offsets begin ", begin, " > end ", end));
    }
    if (end > buffer_size) {
      return bad_tensor(absl::StrCat("data_offsets [", begin, ", ", end,
                                     ") run past the data buffer of ", buffer_size, " bytes"));
    }
    uint64_t numel = 0;
    // Shape products beyond the buffer size cannot match it; the limit also prevents overflow.
    if (!CheckedNumel(e.shape, buffer_size, &numel) || numel * dsize != end - begin) {
      return bad_tensor(absl::StrCat("shape [", absl::StrJoin(e.shape, ", "), "] of ", e.dtype,
                                     " does not match data_offsets [", begin, ", ", end, ") (",
                                     end - begin, " bytes)"));
    }
    e.data = buffer + begin;
    e.nbytes = static_cast<size_t>(end - begin);
    file.entries_.emplace(name, std::move(e));
  }

  // Overlap check: sort the non-empty extents and compare neighbours.
  std::vector<const SafetensorsFile::Entry*> extents;
  for (const auto& [name, e] : file.entries_) {
    if (e.nbytes > 0) extents.push_back(&e);
  }
  std::sort(extents.begin(), extents.end(), [](const auto* a, const auto* b) {
    return a->data != b->data ? a->data < b->data : a->name < b->name;
  });
  for (size_t i = 1; i < extents.size(); ++i) {
    const auto* prev = extents[i - 1];
    if (extents[i]->data < prev->data + prev->nbytes) {
      return bad(absl::StrCat("tensor '", extents[i]->name, "' overlaps tensor '", prev->name,
                              "' in the data buffer"));
    }
  }

  file.path_ = std::move(path);
  file.storage_ = std::move(storage);  // moving a vector keeps its heap buffer, so data stays put
  return file;
}

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoError("cannot open safetensors file", path, errno);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("cannot stat", path, errno);
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("safetensors path ", path, " is not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  std::vector<uint64_t> storage((size + 7) / 8);
  auto* p = reinterpret_cast<char*>(storage.data());
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::read(fd.get(), p + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot read", path, errno);
    }
    if (n == 0) {
      return absl::DataLossError(absl::StrCat("safetensors file ", path, " shrank to ", done,
                                              " bytes while being read (expected ", size, ")"));
    }
    done += static_cast<size_t>(n);
  }
  return ParseSafetensors(path, std::move(storage), size);
}

}  // namespace raptr
