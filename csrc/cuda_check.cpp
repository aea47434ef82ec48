#include "cuda_check.h"

namespace bk {

const char* cusolver_status_name(cusolverStatus_t status) {
  switch (status) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_MAPPING_ERROR: return "CUSOLVER_STATUS_MAPPING_ERROR";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "CUSOLVER_STATUS_(unknown)";
  }
}

void check_cuda(cudaError_t err, const char* call) {
  if (err == cudaSuccess) return;
  throw std::runtime_error(std::string(call) + " failed: " + cudaGetErrorName(err) + " (" +
                           cudaGetErrorString(err) + ")");
}

void check_cusolver(cusolverStatus_t status, const char* call) {
  if (status == CUSOLVER_STATUS_SUCCESS) return;
  std::string msg = std::string(call) + " failed with " + cusolver_status_name(status) + " (" +
                    std::to_string(static_cast<int>(status)) + ")";
  if (status == CUSOLVER_STATUS_INVALID_VALUE) throw std::invalid_argument(msg);
  throw std::runtime_error(msg);
}

int device_count() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // reset the runtime's last-error state for later calls
    std::string hint = err == cudaErrorInsufficientDriver
                           ? "no NVIDIA driver is loaded, or it is older than CUDA " +
                                 std::to_string(CUDART_VERSION / 1000) + "." +
                                 std::to_string(CUDART_VERSION % 1000 / 10) + " needs"
                           : "the cuSOLVER eigensolver needs an NVIDIA GPU and driver";
    throw std::runtime_error(std::string("no usable CUDA GPU: the CUDA runtime reports ") + cudaGetErrorName(err) +
                             " (" + cudaGetErrorString(err) + "); " + hint);
  }
  if (count == 0) {
    throw std::runtime_error("no usable CUDA GPU: the CUDA runtime found no device; "
                             "the cuSOLVER eigensolver needs an NVIDIA GPU and driver");
  }
  return count;
}

void require_device(int device) {
  int count = device_count();
  if (device < 0 || device >= count) {
    throw std::invalid_argument("CUDA device index " + std::to_string(device) + " is out of range: " +
                                std::to_string(count) + " device(s) visible");
  }
}

DeviceGuard::DeviceGuard(int device) : device_(device) {
  check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
  if (previous_ != device_) check_cuda(cudaSetDevice(device_), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0 && previous_ != device_) cudaSetDevice(previous_);
}

}  // namespace bk
