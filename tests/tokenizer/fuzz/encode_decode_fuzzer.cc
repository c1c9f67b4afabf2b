// Fuzz target: arbitrary bytes through Encode, Decode and the streaming
// detokenizer of the real tokenizers (Llama 3 and Qwen3 when ../shared is
// present) and of a committed small one.
//
// Properties:
//  - invalid UTF-8 is rejected with InvalidArgument, valid text always encodes;
//  - Decode accepts every id Encode produced, and its output is valid UTF-8;
//  - Llama 3 (byte-level, no normalizer) round-trips text exactly;
//  - IncrementalDetokenizer's deltas are valid UTF-8 and add up to Decode;
//  - arbitrary ids decode or fail cleanly (OutOfRange / InvalidArgument).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/unicode.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using sluice::tokenizer::IncrementalDetokenizer;
using sluice::tokenizer::Tokenizer;
using sluice::tokenizer::internal::IsValidUtf8;

struct Target {
  std::unique_ptr<Tokenizer> tokenizer;
  bool exact_round_trip = false;
};

std::vector<Target>& Targets() {
  static std::vector<Target>* targets = [] {
    auto* t = new std::vector<Target>();
    std::string shared = SLUICE_SHARED_TOKENIZERS_DIR;
    if (const char* env = std::getenv("SLUICE_TOKENIZERS_DIR"); env != nullptr && *env) {
      shared = env;
    }
    for (const char* name : {"llama3", "qwen3"}) {
      auto tok = Tokenizer::LoadFromDirectory(shared + "/" + name);
      if (tok.ok()) t->push_back(Target{*std::move(tok), std::string(name) == "llama3"});
    }
    std::ifstream in(std::string(SLUICE_TOKENIZER_TEST_DATA_DIR) +
                     "/fuzz_seeds/metaspace_byte_fallback.json");
    std::string json((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto small = Tokenizer::LoadFromJson(json, "");
    SLUICE_FUZZ_CHECK(small.ok());
    t->push_back(Target{*std::move(small), false});
    return t;
  }();
  return *targets;
}

// Streams at most this many ids: decoders that cannot slide a window make
// streaming quadratic, and long inputs add nothing but time.
constexpr size_t kMaxStreamedIds = 512;

void CheckStreaming(const Tokenizer& tok, std::vector<int32_t> ids, bool skip) {
  if (ids.size() > kMaxStreamedIds) ids.resize(kMaxStreamedIds);
  auto full = tok.Decode(ids, skip);
  SLUICE_FUZZ_CHECK(full.ok());
  IncrementalDetokenizer detok(tok, skip);
  std::string streamed;
  for (int32_t id : ids) {
    auto delta = detok.Push(id);
    SLUICE_FUZZ_CHECK(delta.ok());
    SLUICE_FUZZ_CHECK(IsValidUtf8(*delta));
    streamed += *delta;
  }
  streamed += detok.Finish();
  if (streamed != *full) {
    size_t at = 0;
    while (at < streamed.size() && at < full->size() && streamed[at] == (*full)[at]) ++at;
    const size_t from = at < 40 ? 0 : at - 40;
    std::fprintf(stderr,
                 "streaming mismatch (skip=%d) at byte %zu of %zu/%zu\n  streamed: ...%s\n  "
                 "decoded:  ...%s\n",
                 skip, at, streamed.size(), full->size(), streamed.substr(from, 80).c_str(),
                 full->substr(from, 80).c_str());
  }
  SLUICE_FUZZ_CHECK(streamed == *full);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const bool valid = IsValidUtf8(text);
  for (const Target& target : Targets()) {
    const Tokenizer& tok = *target.tokenizer;
    auto ids = tok.Encode(text, /*add_special_tokens=*/size % 2 == 0);
    if (!valid) {
      SLUICE_FUZZ_CHECK(!ids.ok() && ids.status().code() == absl::StatusCode::kInvalidArgument);
    } else {
      SLUICE_FUZZ_CHECK(ids.ok());
      auto decoded = tok.Decode(*ids, false);
      SLUICE_FUZZ_CHECK(decoded.ok());
      SLUICE_FUZZ_CHECK(IsValidUtf8(*decoded));
      if (target.exact_round_trip) {
        auto plain = tok.Encode(text, false);
        SLUICE_FUZZ_CHECK(plain.ok());
        SLUICE_FUZZ_CHECK(*tok.Decode(*plain, false) == text);
      }
      CheckStreaming(tok, *ids, size % 3 == 0);
    }
    // The same bytes read as ids, some of them out of range.
    std::vector<int32_t> raw_ids;
    for (size_t i = 0; i + 3 < size && raw_ids.size() < 64; i += 4) {
      int32_t v;
      std::memcpy(&v, data + i, 4);
      raw_ids.push_back(v % (tok.vocab_size() + 8));
    }
    auto decoded = tok.Decode(raw_ids, size % 5 == 0);
    if (decoded.ok()) {
      SLUICE_FUZZ_CHECK(IsValidUtf8(*decoded));
      CheckStreaming(tok, raw_ids, size % 5 == 0);
    } else {
      const auto code = decoded.status().code();
      SLUICE_FUZZ_CHECK(code == absl::StatusCode::kOutOfRange ||
                        code == absl::StatusCode::kInvalidArgument);
    }
  }
  return 0;
}
