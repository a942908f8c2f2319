// Factories of the codecs, one file each; registry.cpp maps CodecId to them. Each validates the
// spec fields it uses (std::invalid_argument) and zeroes the others.
#pragma once

#include <memory>

#include "core/codec/codec.h"

namespace saddle::codec {

std::unique_ptr<Codec> make_none(const CodecSpec& spec);
std::unique_ptr<Codec> make_fp16(const CodecSpec& spec);
std::unique_ptr<Codec> make_bf16(const CodecSpec& spec);
std::unique_ptr<Codec> make_qsgd(const CodecSpec& spec);
std::unique_ptr<Codec> make_topk(const CodecSpec& spec);
std::unique_ptr<Codec> make_randk(const CodecSpec& spec);
std::unique_ptr<Codec> make_sign(const CodecSpec& spec);

// Checks a qsgd / sign block size: positive multiple of 8, so every block starts on a byte.
void check_block_size(uint32_t block_size);

}  // namespace saddle::codec
