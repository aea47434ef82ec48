#include "handles.h"

#include <cstdint>
#include <map>
#include <utility>

#include "cuda_check.h"

namespace bk {

namespace {

using Key = std::pair<int, std::uintptr_t>;

struct Cache {
  std::mutex mutex;
  std::map<Key, std::shared_ptr<SolverHandle>> handles;
};

// Never destroyed: destroying CUDA objects during interpreter shutdown can run after the driver
// has been torn down. The handles die with the process.
Cache& cache() {
  static Cache* instance = new Cache();
  return *instance;
}

}  // namespace

SolverHandle::SolverHandle(int device_, cudaStream_t stream_) : device(device_), stream(stream_) {
  DeviceGuard guard(device);
  check_cusolver(cusolverDnCreate(&dn), "cusolverDnCreate");
  cusolverStatus_t status = cusolverDnSetStream(dn, stream);
  if (status == CUSOLVER_STATUS_SUCCESS) status = cusolverDnCreateParams(&params);
  if (status != CUSOLVER_STATUS_SUCCESS) {
    cusolverDnDestroy(dn);
    check_cusolver(status, "cusolverDnSetStream/cusolverDnCreateParams");
  }
}

SolverHandle::~SolverHandle() {
  int previous = -1;
  if (cudaGetDevice(&previous) == cudaSuccess && previous != device) cudaSetDevice(device);
  if (params != nullptr) cusolverDnDestroyParams(params);
  if (dn != nullptr) cusolverDnDestroy(dn);
  if (previous >= 0 && previous != device) cudaSetDevice(previous);
}

std::shared_ptr<SolverHandle> solver_handle(int device, cudaStream_t stream) {
  Cache& c = cache();
  Key key{device, reinterpret_cast<std::uintptr_t>(stream)};
  std::lock_guard<std::mutex> lock(c.mutex);
  auto found = c.handles.find(key);
  if (found != c.handles.end()) return found->second;
  auto handle = std::make_shared<SolverHandle>(device, stream);
  c.handles.emplace(key, handle);
  return handle;
}

std::size_t cached_handle_count() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.handles.size();
}

void clear_handles() {
  Cache& c = cache();
  std::map<Key, std::shared_ptr<SolverHandle>> dropped;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    dropped.swap(c.handles);
  }
}

}  // namespace bk
