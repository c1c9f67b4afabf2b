// sluice-inspect: a shape-only ("meta") load of a checkpoint's config.json. Prints the
// family, layer layout and parameter counts without reading any weights, so a real
// published config can be checked on a machine that does not hold the model.
//   sluice-inspect --config path/to/config.json
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_join.h"
#include "engine/config/model_config.h"

ABSL_FLAG(std::string, config, "", "config.json to inspect");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  auto c = sluice::engine::ModelConfig::FromFile(absl::GetFlag(FLAGS_config));
  if (!c.ok()) {
    std::fprintf(stderr, "sluice-inspect: %s\n", c.status().ToString().c_str());
    return 1;
  }
  std::printf("model_type          %s\n", c->model_type.c_str());
  std::printf("layers              %lld (%lld full attention, %lld linear attention)\n",
              static_cast<long long>(c->num_layers), static_cast<long long>(c->NumAttentionLayers()),
              static_cast<long long>(c->NumLinearAttentionLayers()));
  std::printf("hidden              %lld, vocab %lld, heads %lld/%lld x %lld (rotary %lld)\n",
              static_cast<long long>(c->hidden_size), static_cast<long long>(c->vocab_size),
              static_cast<long long>(c->num_attention_heads), static_cast<long long>(c->num_key_value_heads),
              static_cast<long long>(c->head_dim), static_cast<long long>(c->rotary_dim()));
  if (c->moe.num_experts > 0) {
    std::printf("experts             %lld, top-%lld, expert ffn %lld, shared %lld\n",
                static_cast<long long>(c->moe.num_experts), static_cast<long long>(c->moe.experts_per_token),
                static_cast<long long>(c->moe.expert_intermediate_size),
                static_cast<long long>(c->moe.shared_expert_intermediate_size));
  }
  std::printf("total parameters    %llu (%.2f B)\n", static_cast<unsigned long long>(c->TotalParameters()),
              c->TotalParameters() / 1e9);
  std::printf("active parameters   %llu (%.2f B)\n", static_cast<unsigned long long>(c->ActiveParameters()),
              c->ActiveParameters() / 1e9);
  if (!c->not_served.empty()) std::printf("not served          %s\n", absl::StrJoin(c->not_served, ", ").c_str());
  return 0;
}
