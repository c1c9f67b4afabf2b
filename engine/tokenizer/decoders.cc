#include "engine/tokenizer/decoders.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "engine/tokenizer/json_util.h"
#include "engine/tokenizer/pre_tokenizers.h"
#include "engine/tokenizer/regex.h"
#include "engine/tokenizer/unicode.h"

namespace sluice::tokenizer::internal {
namespace {

// Maps byte-level characters back to bytes over the whole sequence and
// decodes them lossily. A token with any character outside the byte-level
// alphabet (an added token such as "<｜User｜>") contributes its raw bytes.
class ByteLevelDecoder final : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::string bytes;
    for (const std::string& token : *tokens) {
      const size_t mark = bytes.size();
      bool all_mapped = true;
      for (size_t i = 0; i < token.size();) {
        char32_t cp;
        i += DecodeUtf8(token, i, &cp);
        const int b = UnicodeToByte(cp);
        if (b < 0) {
          all_mapped = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      if (!all_mapped) {
        bytes.resize(mark);
        bytes.append(token);
      }
    }
    tokens->assign(1, Utf8Lossy(bytes));
    return absl::OkStatus();
  }
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, bool strip_first)
      : replacement_(replacement), strip_first_(strip_first) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t t = 0; t < tokens->size(); ++t) {
      const std::string& token = (*tokens)[t];
      std::string out;
      out.reserve(token.size());
      for (size_t i = 0; i < token.size();) {
        char32_t cp;
        const size_t len = DecodeUtf8(token, i, &cp);
        if (cp == replacement_) {
          // `tokenizers` drops every replacement of the first token unless
          // prepend_scheme is "never".
          if (!(t == 0 && strip_first_)) out.push_back(' ');
        } else {
          out.append(token, i, len);
        }
        i += len;
      }
      (*tokens)[t] = std::move(out);
    }
    return absl::OkStatus();
  }

 private:
  char32_t replacement_;
  bool strip_first_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(std::string literal, std::unique_ptr<Regex> regex, std::string content)
      : replacement_(std::move(literal), std::move(regex), std::move(content)) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      if (absl::Status s = replacement_.Apply(&token); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  Replacement replacement_;
};

// Turns runs of <0xXX> tokens back into text; an invalid run becomes one
// U+FFFD per byte (not Rust's lossy decoding), exactly as `tokenizers` does.
class ByteFallbackDecoder final : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string pending;
    auto flush = [&]() {
      if (pending.empty()) return;
      if (IsValidUtf8(pending)) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& token : *tokens) {
      int byte = -1;
      if (token.size() == 6 && token.compare(0, 3, "<0x") == 0 && token[5] == '>') {
        byte = ParseHexByte(token[3], token[4]);
      }
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    tokens->swap(out);
    return absl::OkStatus();
  }

 private:
  static int HexDigit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  static int ParseHexByte(char hi, char lo) {
    const int h = HexDigit(hi), l = HexDigit(lo);
    return h < 0 || l < 0 ? -1 : h * 16 + l;
  }
};

class FuseDecoder final : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::string joined = absl::StrJoin(*tokens, "");
    tokens->assign(1, std::move(joined));
    return absl::OkStatus();
  }
};

// Removes up to `start` leading and `stop` trailing `content` characters
// from every token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::pair<size_t, char32_t>> chars;  // (byte offset, code point)
    for (std::string& token : *tokens) {
      chars.clear();
      for (size_t i = 0; i < token.size();) {
        char32_t cp;
        const size_t len = DecodeUtf8(token, i, &cp);
        chars.emplace_back(i, cp);
        i += len;
      }
      size_t start_cut = 0;
      for (size_t i = 0; i < start_ && i < chars.size(); ++i) {
        if (chars[i].second != content_) break;
        start_cut = i + 1;
      }
      size_t stop_cut = chars.size();
      for (size_t i = 0; i < stop_ && i < chars.size(); ++i) {
        const size_t index = chars.size() - i - 1;
        if (chars[index].second != content_) break;
        stop_cut = index;
      }
      if (stop_cut <= start_cut) {
        token.clear();
        continue;
      }
      const size_t begin = start_cut < chars.size() ? chars[start_cut].first : token.size();
      const size_t end = stop_cut < chars.size() ? chars[stop_cut].first : token.size();
      token = token.substr(begin, end - begin);
    }
    return absl::OkStatus();
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts)
      : parts_(std::move(parts)) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (const auto& part : parts_) {
      if (absl::Status s = part->DecodeChain(tokens); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace

bool DecoderSupportsSlidingWindow(const nlohmann::json& json) {
  if (!json.is_object()) return true;
  const std::string type = GetStringOr(json, "type", "");
  if (type == "Strip") {
    const absl::StatusOr<int64_t> start = GetIntOr(json, "start", 0);
    const absl::StatusOr<int64_t> stop = GetIntOr(json, "stop", 0);
    return start.ok() && stop.ok() && *start <= 1 && *stop == 0;
  }
  if (type != "Sequence") return true;
  auto it = json.find("decoders");
  if (it == json.end() || !it->is_array()) return true;
  for (const auto& item : *it) {
    if (!DecoderSupportsSlidingWindow(item)) return false;
  }
  return true;
}

bool DecoderHasByteFallback(const nlohmann::json& json) {
  if (!json.is_object()) return false;
  const std::string type = GetStringOr(json, "type", "");
  if (type == "ByteFallback") return true;
  if (type != "Sequence") return false;
  auto it = json.find("decoders");
  if (it == json.end() || !it->is_array()) return false;
  for (const auto& item : *it) {
    if (DecoderHasByteFallback(item)) return true;
  }
  return false;
}

absl::StatusOr<std::unique_ptr<Decoder>> DecoderFromJson(const nlohmann::json& json) {
  if (json.is_null()) return std::unique_ptr<Decoder>();
  absl::StatusOr<std::string> type = GetString(json, "type");
  if (!type.ok())
    return absl::InvalidArgumentError(absl::StrCat("decoder: ", type.status().message()));
  if (*type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (*type == "Metaspace") {
    absl::StatusOr<char32_t> replacement =
        ParseSingleChar(GetStringOr(json, "replacement", "\u2581"), "Metaspace replacement");
    if (!replacement.ok()) return replacement.status();
    bool strip_first;
    if (json.contains("prepend_scheme")) {
      strip_first = GetStringOr(json, "prepend_scheme", "always") != "never";
    } else {
      strip_first = GetBoolOr(json, "add_prefix_space", true);
    }
    return std::make_unique<MetaspaceDecoder>(*replacement, strip_first);
  }
  if (*type == "Replace") {
    absl::StatusOr<PatternSpec> pattern = GetPattern(json);
    if (!pattern.ok()) return pattern.status();
    absl::StatusOr<std::string> content = GetString(json, "content");
    if (!content.ok()) return content.status();
    std::unique_ptr<Regex> regex;
    if (pattern->is_regex) {
      absl::StatusOr<std::unique_ptr<Regex>> compiled = Regex::Compile(pattern->text);
      if (!compiled.ok()) return compiled.status();
      regex = *std::move(compiled);
    }
    return std::make_unique<ReplaceDecoder>(pattern->text, std::move(regex), *std::move(content));
  }
  if (*type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (*type == "Fuse") return std::make_unique<FuseDecoder>();
  if (*type == "Strip") {
    absl::StatusOr<char32_t> content =
        ParseSingleChar(GetStringOr(json, "content", " "), "Strip content");
    if (!content.ok()) return content.status();
    absl::StatusOr<int64_t> start = GetIntOr(json, "start", 0);
    if (!start.ok()) return start.status();
    absl::StatusOr<int64_t> stop = GetIntOr(json, "stop", 0);
    if (!stop.ok()) return stop.status();
    if (*start < 0 || *stop < 0) return absl::InvalidArgumentError("Strip start/stop must be >= 0");
    return std::make_unique<StripDecoder>(*content, static_cast<size_t>(*start),
                                          static_cast<size_t>(*stop));
  }
  if (*type == "Sequence") {
    auto parts = ParseSequenceParts<Decoder>(json, "decoders", "decoder", [](const nlohmann::json& item) { return DecoderFromJson(item); });
    if (!parts.ok()) return parts.status();
    return std::make_unique<SequenceDecoder>(*std::move(parts));
  }
  return absl::UnimplementedError(absl::StrCat("decoder type \"", *type, "\" is not supported"));
}

}  // namespace sluice::tokenizer::internal
