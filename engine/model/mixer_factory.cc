// The mixer registry: config.json's layer_types entry → the mixer that runs it.
#include "absl/strings/str_cat.h"
#include "engine/model/blocks.h"
#include "kernels/status_macros.h"

namespace sluice::engine {
namespace {

struct MixerType {
  const char* layer_type;     // config.json layer_types value
  const char* weight_prefix;  // under the layer's prefix
  LayerCacheSpec::Kind cache;
  bool needs_rope;
  absl::StatusOr<std::unique_ptr<Mixer>> (*load)(const MixerContext&);
};

// One line per mixer.
constexpr MixerType kMixerTypes[] = {
    {"full_attention", "self_attn.", LayerCacheSpec::Kind::kKvBlocks, true, &LoadAttentionMixer},
    {"linear_attention", "linear_attn.", LayerCacheSpec::Kind::kStateSlot, false, &LoadLinearAttentionMixer},
};

absl::StatusOr<const MixerType*> FindMixerType(const ModelConfig& config, int64_t layer) {
  const std::string& type = config.layer_types[static_cast<size_t>(layer)];
  for (const MixerType& t : kMixerTypes) {
    if (type == t.layer_type) return &t;
  }
  return absl::InvalidArgumentError(absl::StrCat("config.json: layer ", layer, " has layer type \"", type,
                                                 "\", which no mixer implements"));
}

}  // namespace

absl::StatusOr<std::string> MixerBuilder::WeightPrefix(int64_t layer) const {
  SLUICE_ASSIGN_OR_RETURN(const MixerType* type, FindMixerType(config_, layer));
  return std::string(type->weight_prefix);
}

absl::StatusOr<std::unique_ptr<Mixer>> MixerBuilder::Build(const std::string& layer_prefix, int64_t layer,
                                                           bool gated_branch) {
  SLUICE_ASSIGN_OR_RETURN(const MixerType* type, FindMixerType(config_, layer));
  if (type->needs_rope && rope_table_ == nullptr) {
    SLUICE_ASSIGN_OR_RETURN(kernels::Tensor table, BuildRopeTable(config_.rope, config_.rotary_dim(),
                                                                  config_.max_position_embeddings, device_));
    rope_table_ = std::make_shared<const kernels::Tensor>(std::move(table));
  }
  MixerContext context;
  context.config = &config_;
  context.checkpoint = &ckpt_;
  context.prefix = layer_prefix + type->weight_prefix;
  context.layer = layer;
  context.cache_index = cache_counts_[static_cast<int>(type->cache)]++;
  context.device = device_;
  context.gated_branch = gated_branch;
  context.rope_table = rope_table_;
  SLUICE_ASSIGN_OR_RETURN(std::unique_ptr<Mixer> mixer, type->load(context));
  if (mixer->CacheSpec().kind != type->cache) {
    return absl::InternalError(absl::StrCat("mixer for ", type->layer_type, " declares another cache kind"));
  }
  return mixer;
}

}  // namespace sluice::engine
