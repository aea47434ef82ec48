// cuSOLVER handles cached per (device, stream): creating a handle costs far more than a small solve,
// and a handle is bound to the device that was current when it was made.
#pragma once

#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <cstddef>
#include <memory>
#include <mutex>

namespace bk {

struct SolverHandle {
  SolverHandle(int device, cudaStream_t stream);
  ~SolverHandle();
  SolverHandle(const SolverHandle&) = delete;
  SolverHandle& operator=(const SolverHandle&) = delete;

  int device;
  cudaStream_t stream;
  cusolverDnHandle_t dn = nullptr;
  cusolverDnParams_t params = nullptr;  // the 64-bit API's options object (default algorithms)
  std::mutex mutex;                     // a handle must not be used by two host threads at once
};

// The cached handle for this device and stream, created on first use.
std::shared_ptr<SolverHandle> solver_handle(int device, cudaStream_t stream);

std::size_t cached_handle_count();

// Drops every cached handle; one still in use is destroyed when its last user lets go.
void clear_handles();

}  // namespace bk
