// Error handling shared by the extension's sources: CUDA runtime and cuSOLVER status codes become
// C++ exceptions, which pybind11 turns into Python exceptions (RuntimeError, ValueError).
#pragma once

#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace bk {

// cuSOLVER reported a matrix it could not decompose (a non-zero entry of its info array).
class EighError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

const char* cusolver_status_name(cusolverStatus_t status);

void check_cuda(cudaError_t err, const char* call);
void check_cusolver(cusolverStatus_t status, const char* call);

// Number of usable CUDA devices; throws std::runtime_error naming the cause when there is none
// (no driver, no device, driver too old for the runtime this module was built with).
int device_count();

// Throws std::runtime_error when `device` is not a usable CUDA device index.
void require_device(int device);

// Makes `device` current for its scope and restores the previous device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  int device_ = -1;
};

}  // namespace bk
