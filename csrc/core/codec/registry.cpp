// CodecId -> name and factory. A new codec is one file plus one row here.
#include <iomanip>
#include <sstream>

#include "core/check.h"
#include "core/codec/codecs.h"

namespace saddle::codec {
namespace {

struct Entry {
  CodecId id;
  const char* name;
  std::unique_ptr<Codec> (*make)(const CodecSpec&);
};

constexpr Entry kRegistry[] = {
    {CodecId::kNone, "none", make_none}, {CodecId::kFp16, "fp16", make_fp16},
    {CodecId::kBf16, "bf16", make_bf16}, {CodecId::kQsgd, "qsgd", make_qsgd},
    {CodecId::kTopk, "topk", make_topk}, {CodecId::kRandk, "randk", make_randk},
    {CodecId::kSign, "sign", make_sign},
};

const Entry* find(CodecId id) {
  for (const Entry& e : kRegistry)
    if (e.id == id) return &e;
  return nullptr;
}

}  // namespace

const char* codec_name(CodecId id) {
  const Entry* e = find(id);
  return e ? e->name : "unknown";
}

std::string to_string(const CodecSpec& spec) {
  std::ostringstream out;
  out << codec_name(spec.id);
  switch (spec.id) {
    case CodecId::kQsgd:
      out << "(bits=" << spec.bits << ", block=" << spec.block_size << ")";
      break;
    case CodecId::kSign:
      out << "(block=" << spec.block_size << ")";
      break;
    case CodecId::kTopk:
    case CodecId::kRandk:
      out << "(ratio=" << std::setprecision(17) << spec.ratio << ")";
      break;
    default:
      break;
  }
  return out.str();
}

std::unique_ptr<Codec> make_codec(const CodecSpec& spec) {
  const Entry* e = find(spec.id);
  SADDLE_CHECK_ARG(e != nullptr, "unknown codec id ", static_cast<int>(spec.id));
  return e->make(spec);
}

void check_block_size(uint32_t block_size) {
  SADDLE_CHECK_ARG(block_size > 0 && block_size % 8 == 0,
                   "codec block size must be a positive multiple of 8, got ", block_size);
}

}  // namespace saddle::codec
