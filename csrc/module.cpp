// Python bindings of the extension bilinear_kernels._C. Framework-free: buffers come in as integer
// device addresses and the stream as its integer handle; bilinear_kernels/solvers/cusolver.py
// turns torch tensors and CuPy arrays into these and allocates every buffer.
#include <cuda_runtime_api.h>
#include <cusolverDn.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "cuda_check.h"
#include "eigh.h"
#include "handles.h"

namespace py = pybind11;

namespace {

bk::EighProblem make_problem(int device, std::uintptr_t stream, const std::string& dtype, std::int64_t n,
                             std::int64_t batch, bool vectors, int max_sweeps) {
  bk::EighProblem p;
  p.device = device;
  p.stream = reinterpret_cast<cudaStream_t>(stream);
  p.dtype = bk::dtype_from_name(dtype);
  p.n = n;
  p.batch = batch;
  p.vectors = vectors;
  p.max_sweeps = max_sweeps;
  return p;
}

// The loaded libcusolver's version as major*1000 + minor*100 + patch (CUSOLVER_VERSION's encoding).
int cusolver_runtime_version() {
  int major = 0, minor = 0, patch = 0;
  bk::check_cusolver(cusolverGetProperty(MAJOR_VERSION, &major), "cusolverGetProperty");
  bk::check_cusolver(cusolverGetProperty(MINOR_VERSION, &minor), "cusolverGetProperty");
  bk::check_cusolver(cusolverGetProperty(PATCH_LEVEL, &patch), "cusolverGetProperty");
  return major * 1000 + minor * 100 + patch;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Compiled extension of bilinear_kernels: batched symmetric eigh on cuSOLVER.";

  py::register_exception<bk::EighError>(m, "EighError", PyExc_RuntimeError);

  m.attr("CUSOLVER_BUILD_VERSION") = CUSOLVER_VERSION;
  m.attr("CUDART_BUILD_VERSION") = CUDART_VERSION;
  m.attr("HAS_SYEV_BATCHED") = bk::has_syev_batched();
  m.attr("ALGORITHMS") = py::make_tuple("auto", "syev_batched", "syevj_batched", "syevd");

  m.def("cusolver_version", &cusolver_runtime_version,
        "Version of the libcusolver loaded at run time, encoded like CUSOLVER_BUILD_VERSION.");
  m.def("device_count", &bk::device_count,
        "Number of usable CUDA devices; RuntimeError naming the cause when there is none.");
  m.def("max_batch_per_call", &bk::max_batch_per_call, py::arg("n"),
        "Most n x n matrices one batched cuSOLVER call takes (32-bit indexing); 0 if none fits.");
  m.def(
      "choose_algorithm",
      [](std::int64_t n, std::int64_t batch, const std::string& algorithm) {
        return std::string(bk::algorithm_name(bk::resolve_algorithm(bk::algorithm_from_name(algorithm), n, batch)));
      },
      py::arg("n"), py::arg("batch"), py::arg("algorithm") = "auto",
      "The algorithm a request resolves to for batch matrices of size n (no GPU needed).");
  m.def(
      "workspace_bytes",
      [](int device, std::uintptr_t stream, const std::string& dtype, std::int64_t n, std::int64_t batch,
         bool vectors, const std::string& algorithm, std::uintptr_t a, std::uintptr_t w, int max_sweeps) {
        auto p = make_problem(device, stream, dtype, n, batch, vectors, max_sweeps);
        return bk::workspace_bytes(p, bk::algorithm_from_name(algorithm), reinterpret_cast<const void*>(a),
                                   reinterpret_cast<const void*>(w));
      },
      py::arg("device"), py::arg("stream"), py::arg("dtype"), py::arg("n"), py::arg("batch"), py::arg("vectors"),
      py::arg("algorithm"), py::arg("a"), py::arg("w"), py::arg("max_sweeps") = 0,
      py::call_guard<py::gil_scoped_release>(), "Device workspace in bytes that eigh needs.");
  m.def(
      "eigh",
      [](int device, std::uintptr_t stream, const std::string& dtype, std::int64_t n, std::int64_t batch,
         bool vectors, const std::string& algorithm, std::uintptr_t a, std::uintptr_t w, std::uintptr_t info,
         std::uintptr_t work, std::size_t work_bytes, int max_sweeps) {
        auto p = make_problem(device, stream, dtype, n, batch, vectors, max_sweeps);
        auto ran = bk::eigh(p, bk::algorithm_from_name(algorithm), reinterpret_cast<void*>(a),
                            reinterpret_cast<void*>(w), reinterpret_cast<int*>(info), reinterpret_cast<void*>(work),
                            work_bytes);
        return std::string(bk::algorithm_name(ran));
      },
      py::arg("device"), py::arg("stream"), py::arg("dtype"), py::arg("n"), py::arg("batch"), py::arg("vectors"),
      py::arg("algorithm"), py::arg("a"), py::arg("w"), py::arg("info"), py::arg("work"), py::arg("work_bytes"),
      py::arg("max_sweeps") = 0, py::call_guard<py::gil_scoped_release>(),
      "Batched symmetric eigh in place on device buffers (see csrc/eigh.h for the layout); synchronizes the "
      "stream, raises EighError naming the first matrix cuSOLVER could not decompose. Returns the algorithm "
      "that ran.");
  m.def("cached_handles", &bk::cached_handle_count, "Number of cached cuSOLVER handles (one per device and stream).");
  m.def("clear_handles", &bk::clear_handles, "Drop the cached cuSOLVER handles.");
}
