// Payload layout of the block codecs (qsgd, sign), as codec.h specifies it: f32 scale[nb], then
// `bits` bits per element, element i at bit (i·bits mod 8) of byte i·bits/8. Blocks are a multiple
// of 8 elements, so the codes of every block start on a byte.
#pragma once

#include "cuda/host_device.h"

namespace saddle::cuda {

struct BlockLayout {
  size_t n = 0;
  size_t block = 0;  // elements per scale
  int bits = 0;      // code bits per element (sign: 1)

  SADDLE_HD size_t blocks() const { return (n + block - 1) / block; }
  SADDLE_HD size_t code_bytes() const { return (n * bits + 7) / 8; }
  SADDLE_HD size_t payload_bytes() const { return 4 * blocks() + code_bytes(); }
  SADDLE_HD size_t first(size_t j) const { return j * block; }
  SADDLE_HD size_t length(size_t j) const { return n - j * block < block ? n - j * block : block; }
  // Code bytes of block j, and where they start in the payload.
  SADDLE_HD size_t block_code_bytes(size_t j) const { return (length(j) * bits + 7) / 8; }
  SADDLE_HD size_t code_offset(size_t j) const { return 4 * blocks() + first(j) * bits / 8; }
};

}  // namespace saddle::cuda
