#include "engine/tokenizer/tokenizer.h"

#include <cctype>
#include <exception>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/tokenizer/json_util.h"
#include "engine/tokenizer/tokenizer_impl.h"
#include "engine/tokenizer/unicode.h"
#include "nlohmann/json.hpp"

namespace sluice::tokenizer {
namespace {

using internal::GetBoolOr;
using nlohmann::json;

// Deeper nesting than any real file has; the component builders recurse
// through Sequence objects, so unbounded depth could exhaust the stack.
constexpr int kMaxJsonDepth = 64;

struct JsonTooDeep : std::exception {
  const char* what() const noexcept override { return "JSON nesting is too deep"; }
};

absl::StatusOr<json> ParseJson(std::string_view text, std::string_view what) {
  // nlohmann throws on malformed input; keep exceptions inside this boundary.
  try {
    return json::parse(text.begin(), text.end(), [](int depth, json::parse_event_t, json&) {
      if (depth > kMaxJsonDepth) throw JsonTooDeep();
      return true;
    });
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot parse ", internal::AsAbsl(what), ": ", e.what()));
  }
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return std::move(buffer).str();
}

// tokenizer_config.json names tokens either as a string or as a serialized
// AddedToken object {"__type": "AddedToken", "content": ...}.
std::optional<std::string> ConfigTokenName(const json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  return std::nullopt;
}

absl::StatusOr<std::vector<internal::AddedToken>> ParseAddedTokens(const json& root) {
  std::vector<internal::AddedToken> tokens;
  auto it = root.find("added_tokens");
  if (it == root.end() || it->is_null()) return tokens;
  if (!it->is_array()) return absl::InvalidArgumentError("\"added_tokens\" must be an array");
  for (const auto& item : *it) {
    internal::AddedToken token;
    absl::StatusOr<int64_t> id = internal::GetIntOr(item, "id", -1);
    if (!id.ok()) return id.status();
    if (*id < 0 || *id >= (int64_t{1} << 26)) {
      return absl::InvalidArgumentError(absl::StrCat("added token id ", *id, " out of range"));
    }
    absl::StatusOr<std::string> content = internal::GetString(item, "content");
    if (!content.ok()) return content.status();
    if (!internal::IsValidUtf8(*content)) {
      return absl::InvalidArgumentError("added token content is not valid UTF-8");
    }
    token.id = static_cast<int32_t>(*id);
    token.content = *std::move(content);
    token.single_word = GetBoolOr(item, "single_word", false);
    token.lstrip = GetBoolOr(item, "lstrip", false);
    token.rstrip = GetBoolOr(item, "rstrip", false);
    token.special = GetBoolOr(item, "special", false);
    // AddedToken's default: special tokens are not normalized.
    token.normalized = GetBoolOr(item, "normalized", !token.special);
    tokens.push_back(std::move(token));
  }
  return tokens;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TokenizerImpl>> TokenizerImpl::Create(
    std::string_view tokenizer_json, std::string_view tokenizer_config_json,
    const TokenizerOptions& options) {
  absl::StatusOr<json> root = ParseJson(tokenizer_json, "tokenizer.json");
  if (!root.ok()) return root.status();
  if (!root->is_object()) return absl::InvalidArgumentError("tokenizer.json must be an object");
  std::unique_ptr<TokenizerImpl> impl(new TokenizerImpl());
  // nlohmann's accessors can still throw on surprising shapes (e.g. a key
  // lookup on an array); the builders check types, but stay defensive.
  try {
    const json null_json;
    auto field = [&](const char* key) -> const json& {
      auto it = root->find(key);
      return it == root->end() ? null_json : *it;
    };
    if (const json& t = field("truncation"); !t.is_null()) {
      // Truncation would silently drop prompt tokens; refuse rather than
      // ignore it.
      return absl::UnimplementedError("tokenizer.json truncation is not supported");
    }
    absl::StatusOr<std::unique_ptr<internal::Normalizer>> normalizer =
        internal::NormalizerFromJson(field("normalizer"));
    if (!normalizer.ok()) return normalizer.status();
    impl->normalizer_ = *std::move(normalizer);
    absl::StatusOr<std::unique_ptr<internal::PreTokenizer>> pre_tokenizer =
        internal::PreTokenizerFromJson(field("pre_tokenizer"));
    if (!pre_tokenizer.ok()) return pre_tokenizer.status();
    impl->pre_tokenizer_ = *std::move(pre_tokenizer);
    absl::StatusOr<std::unique_ptr<internal::BpeModel>> model =
        internal::BpeModel::FromJson(field("model"), options.word_cache_capacity);
    if (!model.ok()) return model.status();
    impl->model_ = *std::move(model);
    absl::StatusOr<std::unique_ptr<internal::PostProcessor>> post =
        internal::PostProcessorFromJson(field("post_processor"));
    if (!post.ok()) return post.status();
    impl->post_processor_ = *std::move(post);
    absl::StatusOr<std::unique_ptr<internal::Decoder>> decoder =
        internal::DecoderFromJson(field("decoder"));
    if (!decoder.ok()) return decoder.status();
    impl->decoder_ = *std::move(decoder);
    const bool byte_fallback_decoder = internal::DecoderHasByteFallback(field("decoder"));
    impl->streaming_window_safe_ = internal::DecoderSupportsSlidingWindow(field("decoder"));

    absl::StatusOr<std::vector<internal::AddedToken>> added = ParseAddedTokens(*root);
    if (!added.ok()) return added.status();
    int32_t limit = impl->model_->id_limit();
    absl::flat_hash_set<std::string> special_contents;
    for (const internal::AddedToken& token : *added) {
      impl->added_token_to_id_[token.content] = token.id;
      impl->added_id_to_token_[token.id] = token.content;
      if (token.special) special_contents.insert(token.content);
      limit = std::max(limit, token.id + 1);
    }
    // Same density rule as the model's vocabulary (see BpeModel::FromJson).
    if (limit > impl->model_->id_limit() + 4 * static_cast<int64_t>(added->size()) + 1024) {
      return absl::InvalidArgumentError(
          absl::StrCat("added token ids are too sparse (max id ", limit - 1, ")"));
    }
    impl->vocab_size_ = limit;
    if (absl::Status s = impl->added_vocabulary_.Build(*std::move(added), impl->normalizer_.get());
        !s.ok()) {
      return s;
    }
    // `tokenizers` decides "special" by token content, so a model token that
    // spells a special token counts too.
    impl->is_special_.assign(static_cast<size_t>(limit), false);
    for (int32_t id = 0; id < limit; ++id) {
      const std::string* token = impl->IdToToken(id);
      if (token != nullptr && special_contents.contains(*token)) impl->is_special_[id] = true;
    }
    if (impl->post_processor_ != nullptr) {
      // `tokenizers` would emit whatever the template says; an id that names
      // no token would only surface later as a bad embedding lookup.
      std::vector<int32_t> special_ids;
      impl->post_processor_->CollectIds(&special_ids);
      for (int32_t id : special_ids) {
        if (id < 0 || id >= limit || impl->IdToToken(id) == nullptr) {
          return absl::InvalidArgumentError(
              absl::StrCat("post_processor adds id ", id, ", which names no token"));
        }
      }
    }
    if (byte_fallback_decoder) {
      impl->is_byte_fallback_token_.assign(static_cast<size_t>(limit), false);
      for (int32_t id = 0; id < limit; ++id) {
        const std::string* token = impl->IdToToken(id);
        impl->is_byte_fallback_token_[id] =
            token != nullptr && token->size() == 6 && token->compare(0, 3, "<0x") == 0 &&
            (*token)[5] == '>' && std::isxdigit((*token)[3]) && std::isxdigit((*token)[4]);
      }
    }
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("malformed tokenizer.json: ", e.what()));
  }
  if (!tokenizer_config_json.empty()) {
    if (absl::Status s = impl->LoadConfig(tokenizer_config_json, options); !s.ok()) return s;
  }
  return impl;
}

absl::Status TokenizerImpl::LoadConfig(std::string_view config_json,
                                       const TokenizerOptions& options) {
  absl::StatusOr<json> config = ParseJson(config_json, "tokenizer_config.json");
  if (!config.ok()) return config.status();
  if (!config->is_object())
    return absl::InvalidArgumentError("tokenizer_config.json must be an object");
  try {
    if (std::optional<std::string> bos = ConfigTokenName(*config, "bos_token")) {
      bos_id_ = TokenToId(*bos);
    }
    if (std::optional<std::string> eos = ConfigTokenName(*config, "eos_token")) {
      eos_id_ = TokenToId(*eos);
    }
    if (options.apply_config_add_bos_eos &&
        (config->contains("add_bos_token") || config->contains("add_eos_token"))) {
      std::vector<int32_t> prefix, suffix;
      if (GetBoolOr(*config, "add_bos_token", false) && bos_id_.has_value()) {
        prefix.push_back(*bos_id_);
      }
      if (GetBoolOr(*config, "add_eos_token", false) && eos_id_.has_value()) {
        suffix.push_back(*eos_id_);
      }
      post_processor_ =
          std::make_unique<internal::AffixPostProcessor>(std::move(prefix), std::move(suffix));
    }
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("malformed tokenizer_config.json: ", e.what()));
  }
  return absl::OkStatus();
}

std::optional<int32_t> TokenizerImpl::TokenToId(std::string_view token) const {
  if (auto it = added_token_to_id_.find(internal::AsAbsl(token)); it != added_token_to_id_.end())
    return it->second;
  return model_->TokenToId(token);
}

const std::string* TokenizerImpl::IdToToken(int32_t id) const {
  if (auto it = added_id_to_token_.find(id); it != added_id_to_token_.end()) return &it->second;
  return model_->IdToToken(id);
}

absl::StatusOr<std::vector<int32_t>> TokenizerImpl::Encode(std::string_view text,
                                                           bool add_special_tokens) const {
  if (!internal::IsValidUtf8(text)) return absl::InvalidArgumentError("input is not valid UTF-8");
  std::vector<internal::AddedSplit> splits;
  if (absl::Status s = added_vocabulary_.ExtractAndNormalize(text, normalizer_.get(), &splits);
      !s.ok()) {
    return s;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<internal::Piece> pieces;
  for (internal::AddedSplit& split : splits) {
    if (split.added_id >= 0) {
      ids.push_back(split.added_id);
      continue;
    }
    pieces.clear();
    pieces.push_back(std::move(split.text));
    if (pre_tokenizer_ != nullptr) {
      if (absl::Status s = pre_tokenizer_->PreTokenize(&pieces); !s.ok()) return s;
    }
    for (const internal::Piece& piece : pieces) {
      if (absl::Status s = model_->Tokenize(piece.text, &ids); !s.ok()) return s;
    }
  }
  if (add_special_tokens && post_processor_ != nullptr) post_processor_->AddSpecialTokens(&ids);
  return ids;
}

absl::StatusOr<std::string> TokenizerImpl::Decode(absl::Span<const int32_t> ids,
                                                  bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size_) {
      return absl::OutOfRangeError(
          absl::StrCat("token id ", id, " is outside [0, ", vocab_size_, ")"));
    }
    const std::string* token = IdToToken(id);
    if (token == nullptr)
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is unassigned"));
    if (skip_special_tokens && is_special_[id]) continue;
    tokens.push_back(*token);
  }
  if (decoder_ == nullptr) return absl::StrJoin(tokens, " ");
  if (absl::Status s = decoder_->DecodeChain(&tokens); !s.ok()) return s;
  return absl::StrJoin(tokens, "");
}

Tokenizer::Tokenizer(std::unique_ptr<TokenizerImpl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadFromDirectory(
    const std::string& dir, const TokenizerOptions& options) {
  absl::StatusOr<std::string> tokenizer_json = ReadFile(dir + "/tokenizer.json");
  if (!tokenizer_json.ok()) return tokenizer_json.status();
  std::string config_json;
  const std::string config_path = dir + "/tokenizer_config.json";
  if (std::ifstream(config_path).good()) {
    absl::StatusOr<std::string> config = ReadFile(config_path);
    if (!config.ok()) return config.status();
    config_json = *std::move(config);
  }
  return LoadFromJson(*tokenizer_json, config_json, options);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadFromJson(
    std::string_view tokenizer_json, std::string_view tokenizer_config_json,
    const TokenizerOptions& options) {
  absl::StatusOr<std::unique_ptr<TokenizerImpl>> impl =
      TokenizerImpl::Create(tokenizer_json, tokenizer_config_json, options);
  if (!impl.ok()) return impl.status();
  return std::unique_ptr<Tokenizer>(new Tokenizer(*std::move(impl)));
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       bool add_special_tokens) const {
  return impl_->Encode(text, add_special_tokens);
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  return impl_->Decode(ids, skip_special_tokens);
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size(); }
std::optional<int32_t> Tokenizer::bos_token_id() const { return impl_->bos_token_id(); }
std::optional<int32_t> Tokenizer::eos_token_id() const { return impl_->eos_token_id(); }
std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  return impl_->TokenToId(token);
}
std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  const std::string* token = impl_->IdToToken(id);
  if (token == nullptr) return std::nullopt;
  return *token;
}
bool Tokenizer::IsSpecial(int32_t id) const { return impl_->IsSpecial(id); }

}  // namespace sluice::tokenizer
