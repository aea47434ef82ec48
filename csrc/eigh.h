// Batched symmetric eigendecomposition on cuSOLVER, framework-free: device pointers, shapes, dtype
// and the caller's stream come in; the caller owns every device buffer, the workspace included.
//
// Layout: `batch` row-major n×n matrices stored back to back (a C-contiguous (batch, n, n) array).
// Only the lower triangle (row-major) is read, as in torch.linalg.eigh's default. On return `a`
// holds the eigenvectors as rows (the caller's (batch, n, n) array transposed in its last two
// dimensions has them as columns) and `w` the eigenvalues in ascending order, (batch, n).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace bk {

enum class DType { Float32, Float64 };

enum class Algorithm {
  Auto,          // the rule in choose_algorithm
  SyevBatched,   // cusolverDnXsyevBatched: one call for the whole batch (cuSOLVER >= 11.7.1)
  SyevjBatched,  // cusolver{S,D}syevjBatched: batched Jacobi
  Syevd,         // cusolverDnXsyevd once per matrix: the last resort, any n
};

struct EighProblem {
  int device = 0;
  cudaStream_t stream = nullptr;
  DType dtype = DType::Float32;
  std::int64_t n = 0;
  std::int64_t batch = 0;
  bool vectors = true;
  int max_sweeps = 0;  // Jacobi sweeps for SyevjBatched; 0 keeps cuSOLVER's default
};

DType dtype_from_name(const std::string& name);
Algorithm algorithm_from_name(const std::string& name);
const char* algorithm_name(Algorithm algorithm);

// Whether this build has cusolverDnXsyevBatched (compiled against cuSOLVER >= 11.7.1).
bool has_syev_batched();

// The most matrices one batched call may take: cuSOLVER's batched routines index the whole batch
// with 32-bit integers (n * lda * batch <= 2^31 - 1). 0 when not even one matrix fits.
std::int64_t max_batch_per_call(std::int64_t n);

// The algorithm `requested` resolves to for this problem (Auto applies the rule; an explicit
// choice is checked to be possible and returned).
Algorithm resolve_algorithm(Algorithm requested, std::int64_t n, std::int64_t batch);

// Device workspace in bytes that eigh needs for this problem and algorithm.
std::size_t workspace_bytes(const EighProblem& problem, Algorithm algorithm, const void* a, const void* w);

// Runs the solver, then reads cuSOLVER's info array (batch ints on the device) and throws
// EighError naming the first matrix it could not decompose. Synchronizes problem.stream.
// Returns the algorithm that ran.
Algorithm eigh(const EighProblem& problem, Algorithm algorithm, void* a, void* w, int* info, void* work,
               std::size_t work_bytes);

}  // namespace bk
