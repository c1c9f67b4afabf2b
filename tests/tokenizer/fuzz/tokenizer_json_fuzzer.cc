// Fuzz target: tokenizer.json (and tokenizer_config.json) parsing. Loading
// arbitrary bytes must return a status, never crash or throw; whatever loads
// must then encode and decode a fixed probe without crashing.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/unicode.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  // A small cache keeps pathological inputs (huge vocab ids) cheap.
  sluice::tokenizer::TokenizerOptions options;
  options.word_cache_capacity = 64;
  // Half the inputs also try the tail as tokenizer_config.json.
  const size_t split = size % 2 == 0 ? input.rfind('\x1e') : std::string_view::npos;
  const std::string_view json = split == std::string_view::npos ? input : input.substr(0, split);
  const std::string_view config =
      split == std::string_view::npos ? std::string_view() : input.substr(split + 1);
  auto tok = sluice::tokenizer::Tokenizer::LoadFromJson(json, config, options);
  if (!tok.ok()) return 0;
  for (const char* probe : {"Hello world 123 ab", " \t\n  x", "<|end|><s>\xE4\xBD\xA0\xE5\xA5\xBD",
                            "\xF0\x9F\xA6\x99 caf\xC3\xA9", ""}) {
    auto ids = (*tok)->Encode(probe, true);
    if (!ids.ok()) continue;  // e.g. unk_token missing from the vocab
    for (int32_t id : *ids) {
      SLUICE_FUZZ_CHECK(id >= 0 && id < (*tok)->vocab_size());
    }
    for (bool skip : {false, true}) {
      auto text = (*tok)->Decode(*ids, skip);
      if (text.ok()) SLUICE_FUZZ_CHECK(sluice::tokenizer::internal::IsValidUtf8(*text));
    }
  }
  return 0;
}
