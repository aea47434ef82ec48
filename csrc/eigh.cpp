#include "eigh.h"

#include <cusolverDn.h>

#include <algorithm>
#include <climits>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "cuda_check.h"
#include "handles.h"

// cusolverDnXsyevBatched arrived in cuSOLVER 11.7.1 (CUDA 12.6 Update 2).
#if defined(CUSOLVER_VERSION) && CUSOLVER_VERSION >= 11701
#define BK_HAS_SYEV_BATCHED 1
#else
#define BK_HAS_SYEV_BATCHED 0
#endif

namespace bk {

namespace {

// Without XsyevBatched, batched Jacobi is used up to this n: its documented range of matrices small
// enough to stay on chip (PyTorch's rule too); beyond it a per-matrix syevd loop.
constexpr std::int64_t kSyevjBatchedMaxN = 32;

// The caller's row-major lower triangle is cuSOLVER's column-major upper triangle.
constexpr cublasFillMode_t kUplo = CUBLAS_FILL_MODE_UPPER;

cudaDataType cuda_type(DType dtype) { return dtype == DType::Float32 ? CUDA_R_32F : CUDA_R_64F; }

std::size_t element_size(DType dtype) { return dtype == DType::Float32 ? 4 : 8; }

cusolverEigMode_t jobz(const EighProblem& p) {
  return p.vectors ? CUSOLVER_EIG_MODE_VECTOR : CUSOLVER_EIG_MODE_NOVECTOR;
}

void validate(const EighProblem& p) {
  if (p.n < 0) throw std::invalid_argument("n must be >= 0, got " + std::to_string(p.n));
  if (p.batch < 0) throw std::invalid_argument("batch must be >= 0, got " + std::to_string(p.batch));
  if (p.max_sweeps < 0) throw std::invalid_argument("max_sweeps must be >= 0, got " + std::to_string(p.max_sweeps));
}

// A device pointer on `device`: anything else (host memory, another GPU) would fault inside cuSOLVER.
void require_device_pointer(const void* ptr, int device, const char* name) {
  if (ptr == nullptr) throw std::invalid_argument(std::string(name) + " is a null pointer");
  cudaPointerAttributes attr{};
  cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::invalid_argument(std::string(name) + " is not a CUDA device pointer (" + cudaGetErrorString(err) + ")");
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
    throw std::invalid_argument(std::string(name) + " points to host memory; a CUDA device buffer is needed");
  }
  if (attr.type == cudaMemoryTypeDevice && attr.device != device) {
    throw std::invalid_argument(std::string(name) + " lives on CUDA device " + std::to_string(attr.device) +
                                ", the problem on device " + std::to_string(device));
  }
}

// Jacobi options for syevjBatched: eigenvalues sorted ascending, the caller's sweep cap.
struct SyevjParams {
  explicit SyevjParams(const EighProblem& p) {
    check_cusolver(cusolverDnCreateSyevjInfo(&info), "cusolverDnCreateSyevjInfo");
    cusolverStatus_t status = cusolverDnXsyevjSetSortEig(info, 1);
    if (status == CUSOLVER_STATUS_SUCCESS && p.max_sweeps > 0) {
      status = cusolverDnXsyevjSetMaxSweeps(info, p.max_sweeps);
    }
    if (status != CUSOLVER_STATUS_SUCCESS) {
      cusolverDnDestroySyevjInfo(info);
      check_cusolver(status, "cusolverDnXsyevjSet*");
    }
  }
  ~SyevjParams() { cusolverDnDestroySyevjInfo(info); }
  SyevjParams(const SyevjParams&) = delete;
  SyevjParams& operator=(const SyevjParams&) = delete;
  syevjInfo_t info = nullptr;
};

struct Workspace {
  std::size_t device_bytes = 0;
  std::size_t host_bytes = 0;
  std::int64_t per_call = 1;  // matrices per library call
};

Workspace query(SolverHandle& h, const EighProblem& p, Algorithm algorithm, const void* a, const void* w) {
  Workspace ws;
  const std::int64_t n = p.n, lda = std::max<std::int64_t>(1, p.n);
  const cudaDataType type = cuda_type(p.dtype);
  switch (algorithm) {
    case Algorithm::Syevd:
      check_cusolver(cusolverDnXsyevd_bufferSize(h.dn, h.params, jobz(p), kUplo, n, type, a, lda, type, w, type,
                                                 &ws.device_bytes, &ws.host_bytes),
                     "cusolverDnXsyevd_bufferSize");
      ws.per_call = 1;
      return ws;
    case Algorithm::SyevBatched:
#if BK_HAS_SYEV_BATCHED
      ws.per_call = std::min(p.batch, max_batch_per_call(n));
      check_cusolver(cusolverDnXsyevBatched_bufferSize(h.dn, h.params, jobz(p), kUplo, n, type, a, lda, type, w, type,
                                                       &ws.device_bytes, &ws.host_bytes, ws.per_call),
                     "cusolverDnXsyevBatched_bufferSize");
      return ws;
#else
      throw std::invalid_argument("this build has no cusolverDnXsyevBatched");
#endif
    case Algorithm::SyevjBatched: {
      ws.per_call = std::min(p.batch, max_batch_per_call(n));
      SyevjParams params(p);
      int lwork = 0;
      const int in = static_cast<int>(n), ilda = static_cast<int>(lda), count = static_cast<int>(ws.per_call);
      if (p.dtype == DType::Float32) {
        check_cusolver(cusolverDnSsyevjBatched_bufferSize(h.dn, jobz(p), kUplo, in, static_cast<const float*>(a), ilda,
                                                          static_cast<const float*>(w), &lwork, params.info, count),
                       "cusolverDnSsyevjBatched_bufferSize");
      } else {
        check_cusolver(cusolverDnDsyevjBatched_bufferSize(h.dn, jobz(p), kUplo, in, static_cast<const double*>(a), ilda,
                                                          static_cast<const double*>(w), &lwork, params.info, count),
                       "cusolverDnDsyevjBatched_bufferSize");
      }
      ws.device_bytes = static_cast<std::size_t>(lwork) * element_size(p.dtype);
      return ws;
    }
    case Algorithm::Auto:
      break;
  }
  throw std::logic_error("workspace query for an unresolved algorithm");
}

void launch(SolverHandle& h, const EighProblem& p, Algorithm algorithm, const Workspace& ws, void* a, void* w,
            int* info, void* work, void* host_work) {
  const std::int64_t n = p.n, lda = std::max<std::int64_t>(1, p.n);
  const cudaDataType type = cuda_type(p.dtype);
  const std::size_t esize = element_size(p.dtype);
  auto matrix = [&](std::int64_t i) { return static_cast<char*>(a) + static_cast<std::size_t>(i * n * lda) * esize; };
  auto values = [&](std::int64_t i) { return static_cast<char*>(w) + static_cast<std::size_t>(i * n) * esize; };

  switch (algorithm) {
    case Algorithm::Syevd:
      for (std::int64_t i = 0; i < p.batch; ++i) {
        check_cusolver(cusolverDnXsyevd(h.dn, h.params, jobz(p), kUplo, n, type, matrix(i), lda, type, values(i), type,
                                        work, ws.device_bytes, host_work, ws.host_bytes, info + i),
                       "cusolverDnXsyevd");
      }
      return;
    case Algorithm::SyevBatched:
#if BK_HAS_SYEV_BATCHED
      for (std::int64_t start = 0; start < p.batch; start += ws.per_call) {
        const std::int64_t count = std::min(ws.per_call, p.batch - start);
        check_cusolver(cusolverDnXsyevBatched(h.dn, h.params, jobz(p), kUplo, n, type, matrix(start), lda, type,
                                              values(start), type, work, ws.device_bytes, host_work, ws.host_bytes,
                                              info + start, count),
                       "cusolverDnXsyevBatched");
      }
      return;
#else
      throw std::invalid_argument("this build has no cusolverDnXsyevBatched");
#endif
    case Algorithm::SyevjBatched: {
      SyevjParams params(p);
      const int in = static_cast<int>(n), ilda = static_cast<int>(lda);
      const int lwork = static_cast<int>(ws.device_bytes / esize);
      for (std::int64_t start = 0; start < p.batch; start += ws.per_call) {
        const int count = static_cast<int>(std::min(ws.per_call, p.batch - start));
        if (p.dtype == DType::Float32) {
          check_cusolver(cusolverDnSsyevjBatched(h.dn, jobz(p), kUplo, in, reinterpret_cast<float*>(matrix(start)),
                                                 ilda, reinterpret_cast<float*>(values(start)),
                                                 static_cast<float*>(work), lwork, info + start, params.info, count),
                         "cusolverDnSsyevjBatched");
        } else {
          check_cusolver(cusolverDnDsyevjBatched(h.dn, jobz(p), kUplo, in, reinterpret_cast<double*>(matrix(start)),
                                                 ilda, reinterpret_cast<double*>(values(start)),
                                                 static_cast<double*>(work), lwork, info + start, params.info, count),
                         "cusolverDnDsyevjBatched");
        }
      }
      return;
    }
    case Algorithm::Auto:
      break;
  }
  throw std::logic_error("launch of an unresolved algorithm");
}

// Reads the info array back (this is where the call synchronizes) and names the first failure.
void check_info(const EighProblem& p, Algorithm algorithm, const int* info) {
  std::vector<int> host(static_cast<std::size_t>(p.batch));
  check_cuda(cudaMemcpyAsync(host.data(), info, host.size() * sizeof(int), cudaMemcpyDeviceToHost, p.stream),
             "cudaMemcpyAsync(info)");
  check_cuda(cudaStreamSynchronize(p.stream), "cudaStreamSynchronize");
  std::int64_t first = -1, failed = 0;
  for (std::int64_t i = 0; i < p.batch; ++i) {
    if (host[i] != 0) {
      if (first < 0) first = i;
      ++failed;
    }
  }
  if (first < 0) return;
  const int code = host[first];
  std::string why = code > 0 ? "it did not converge (check the input for NaN/Inf or extreme scaling)"
                             : "cuSOLVER rejected argument " + std::to_string(-code);
  throw EighError(std::string("cuSOLVER ") + algorithm_name(algorithm) + " could not decompose matrix " +
                  std::to_string(first) + " of " + std::to_string(p.batch) + " (info = " + std::to_string(code) +
                  ", " + std::to_string(failed) + " failed in all): " + why);
}

}  // namespace

DType dtype_from_name(const std::string& name) {
  if (name == "float32") return DType::Float32;
  if (name == "float64") return DType::Float64;
  throw std::invalid_argument("dtype must be 'float32' or 'float64', got '" + name + "'");
}

Algorithm algorithm_from_name(const std::string& name) {
  if (name == "auto") return Algorithm::Auto;
  if (name == "syev_batched") return Algorithm::SyevBatched;
  if (name == "syevj_batched") return Algorithm::SyevjBatched;
  if (name == "syevd") return Algorithm::Syevd;
  throw std::invalid_argument("algorithm must be one of 'auto', 'syev_batched', 'syevj_batched', 'syevd', got '" +
                              name + "'");
}

const char* algorithm_name(Algorithm algorithm) {
  switch (algorithm) {
    case Algorithm::Auto: return "auto";
    case Algorithm::SyevBatched: return "syev_batched";
    case Algorithm::SyevjBatched: return "syevj_batched";
    case Algorithm::Syevd: return "syevd";
  }
  return "unknown";
}

bool has_syev_batched() { return BK_HAS_SYEV_BATCHED != 0; }

std::int64_t max_batch_per_call(std::int64_t n) {
  const std::int64_t per_matrix = std::max<std::int64_t>(1, n) * std::max<std::int64_t>(1, n);
  return static_cast<std::int64_t>(INT32_MAX) / per_matrix;
}

Algorithm resolve_algorithm(Algorithm requested, std::int64_t n, std::int64_t batch) {
  const bool fits = max_batch_per_call(n) >= 1;
  switch (requested) {
    case Algorithm::Auto:
      // One matrix: nothing to batch, syevd is cuSOLVER's reference routine.
      if (batch <= 1) return Algorithm::Syevd;
      if (has_syev_batched() && fits) return Algorithm::SyevBatched;
      if (n <= kSyevjBatchedMaxN) return Algorithm::SyevjBatched;
      return Algorithm::Syevd;
    case Algorithm::SyevBatched:
      if (!has_syev_batched()) {
        throw std::invalid_argument("algorithm 'syev_batched' needs cuSOLVER >= 11.7.1 at build time; this build has " +
                                    std::to_string(CUSOLVER_VERSION));
      }
      [[fallthrough]];
    case Algorithm::SyevjBatched:
      if (!fits) {
        throw std::invalid_argument(std::string("algorithm '") + algorithm_name(requested) +
                                    "' indexes with 32-bit integers and needs n * n <= 2^31 - 1, got n = " +
                                    std::to_string(n) + " (use 'syevd')");
      }
      return requested;
    case Algorithm::Syevd:
      return requested;
  }
  throw std::invalid_argument("unknown algorithm");
}

std::size_t workspace_bytes(const EighProblem& p, Algorithm algorithm, const void* a, const void* w) {
  validate(p);
  require_device(p.device);
  if (p.n == 0 || p.batch == 0) return 0;
  const Algorithm resolved = resolve_algorithm(algorithm, p.n, p.batch);
  auto handle = solver_handle(p.device, p.stream);
  std::lock_guard<std::mutex> lock(handle->mutex);
  DeviceGuard guard(p.device);
  return query(*handle, p, resolved, a, w).device_bytes;
}

Algorithm eigh(const EighProblem& p, Algorithm algorithm, void* a, void* w, int* info, void* work,
               std::size_t work_bytes) {
  validate(p);
  require_device(p.device);
  const Algorithm resolved = resolve_algorithm(algorithm, p.n, p.batch);
  if (p.n == 0 || p.batch == 0) return resolved;
  require_device_pointer(a, p.device, "a");
  require_device_pointer(w, p.device, "w");
  require_device_pointer(info, p.device, "info");

  auto handle = solver_handle(p.device, p.stream);
  std::lock_guard<std::mutex> lock(handle->mutex);
  DeviceGuard guard(p.device);
  const Workspace ws = query(*handle, p, resolved, a, w);
  if (work_bytes < ws.device_bytes) {
    throw std::invalid_argument("workspace of " + std::to_string(work_bytes) + " bytes is too small: " +
                                algorithm_name(resolved) + " needs " + std::to_string(ws.device_bytes));
  }
  if (ws.device_bytes > 0) require_device_pointer(work, p.device, "work");
  std::vector<char> host_work(ws.host_bytes);
  try {
    launch(*handle, p, resolved, ws, a, w, info, work, host_work.empty() ? nullptr : host_work.data());
  } catch (...) {
    // work already queued may still read host_work and the caller's buffers: let it finish first
    cudaStreamSynchronize(p.stream);
    throw;
  }
  check_info(p, resolved, info);
  return resolved;
}

}  // namespace bk
