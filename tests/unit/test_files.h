// Helpers for tests that read files of the source tree (the examples/ job specs).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace raptr::testing {

// The repository's examples/ folder: $RAPTR_SOURCE_DIR/examples, else found from this header's
// own path (tests/unit/ -> the repository root).
inline std::filesystem::path ExamplesDir() {
  if (const char* root = std::getenv("RAPTR_SOURCE_DIR")) {
    return std::filesystem::path(root) / "examples";
  }
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "examples";
}

inline std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace raptr::testing
