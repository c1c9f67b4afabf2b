// Status propagation helpers shared by every layer (kernels is the lowest one).
#ifndef SLUICE_KERNELS_STATUS_MACROS_H_
#define SLUICE_KERNELS_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SLUICE_RETURN_IF_ERROR(expr)           \
  do {                                         \
    if (::absl::Status _sluice_status = (expr); \
        !_sluice_status.ok())                  \
      return _sluice_status;                   \
  } while (0)

#define SLUICE_CONCAT_INNER(a, b) a##b
#define SLUICE_CONCAT(a, b) SLUICE_CONCAT_INNER(a, b)
#define SLUICE_ASSIGN_OR_RETURN(lhs, expr) \
  SLUICE_ASSIGN_OR_RETURN_IMPL(SLUICE_CONCAT(_sluice_statusor_, __LINE__), lhs, expr)
#define SLUICE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()

#endif  // SLUICE_KERNELS_STATUS_MACROS_H_
