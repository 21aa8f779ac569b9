// Status helpers: early-return macros over absl::Status / absl::StatusOr, as in LevelDB and Abseil.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define RAPTR_CONCAT_INNER(a, b) a##b
#define RAPTR_CONCAT(a, b) RAPTR_CONCAT_INNER(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::absl::Status raptr_status_ = (expr);         \
    if (!raptr_status_.ok()) return raptr_status_; \
  } while (0)

// `lhs = value of expr` when expr (an absl::StatusOr<T>) is OK; else returns its status.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(RAPTR_CONCAT(raptr_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(tmp).value()
