// Writes a message header, built on the host, to device memory. The bytes travel as a kernel
// argument, so the host buffer may go away as soon as the launch returns (no pinned staging).
#include "core/codec/wire.h"
#include "cuda/check.h"
#include "cuda/device_codecs.h"

namespace saddle::cuda::detail {
namespace {

struct HeaderArg {
  uint8_t bytes[codec::kHeaderBytes];
};

__global__ void write_header_kernel(HeaderArg header, uint8_t* msg) {
  if (threadIdx.x < codec::kHeaderBytes) msg[threadIdx.x] = header.bytes[threadIdx.x];
}

}  // namespace

void write_header(const uint8_t* header, uint8_t* msg, cudaStream_t stream) {
  HeaderArg arg;
  for (size_t i = 0; i < codec::kHeaderBytes; ++i) arg.bytes[i] = header[i];
  write_header_kernel<<<1, static_cast<unsigned>(codec::kHeaderBytes), 0, stream>>>(arg, msg);
  SADDLE_CUDA_CHECK(cudaGetLastError(), "header write");
}

}  // namespace saddle::cuda::detail
