#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/tokenizer_impl.h"

namespace sluice::tokenizer {
namespace {

constexpr char kReplacementChar[] = "\xEF\xBF\xBD";

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

absl::StatusOr<std::string> IncrementalDetokenizer::DecodeRange(size_t begin, size_t end) const {
  return tokenizer_.Decode(absl::MakeConstSpan(ids_).subspan(begin, end - begin),
                           skip_special_tokens_);
}

absl::StatusOr<std::string> IncrementalDetokenizer::Push(int32_t id) {
  // Validate first so that a bad id never enters the window.
  if (id < 0 || id >= tokenizer_.vocab_size()) {
    return absl::OutOfRangeError(
        absl::StrCat("token id ", id, " is outside [0, ", tokenizer_.vocab_size(), ")"));
  }
  if (!tokenizer_.IdToToken(id).has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is unassigned"));
  }
  ids_.push_back(id);
  return Advance(/*final=*/false);
}

std::string IncrementalDetokenizer::Finish() {
  absl::StatusOr<std::string> delta = Advance(/*final=*/true);
  // Every id was validated by Push, so decoding cannot fail here.
  return delta.ok() ? *std::move(delta) : std::string();
}

absl::StatusOr<std::string> IncrementalDetokenizer::Advance(bool final) {
  // A run of byte-fallback tokens decodes as a unit; wait for its end.
  // Skipped special tokens are invisible to the decoder, so a run continues
  // across them.
  if (!final) {
    for (auto it = ids_.rbegin(); it != ids_.rend(); ++it) {
      if (skip_special_tokens_ && tokenizer_.IsSpecial(*it)) continue;
      if (tokenizer_.impl().IsByteFallbackToken(*it)) return std::string();
      break;
    }
  }
  absl::StatusOr<std::string> window = DecodeRange(prefix_offset_, ids_.size());
  if (!window.ok()) return window.status();
  if (!absl::StartsWith(*window, prefix_text_)) {
    // The window no longer extends what was emitted from it (no supported
    // decoder does this, but exactness must not hinge on it): widen the
    // window to the whole sequence, which is exact by definition.
    // prefix_text_ stays "what was emitted from the window start".
    prefix_offset_ = 0;
    read_offset_ = 0;
    prefix_text_ = emitted_;
    window = DecodeRange(0, ids_.size());
    if (!window.ok()) return window.status();
    if (!absl::StartsWith(*window, emitted_)) return std::string();  // cannot retract text
  }
  if (window->size() <= prefix_text_.size()) return std::string();
  // A trailing U+FFFD usually means an incomplete character whose remaining
  // bytes are still to come; hold it back until then (or until Finish).
  if (!final && absl::EndsWith(*window, kReplacementChar)) return std::string();
  std::string delta = window->substr(prefix_text_.size());
  emitted_.append(delta);
  if (!tokenizer_.impl().streaming_window_safe()) {
    // Decoders such as a trailing Strip need the whole sequence every time.
    read_offset_ = ids_.size();
    prefix_text_ = emitted_;
    return delta;
  }
  // Slide the window: keep the ids that produced this delta as context.
  absl::StatusOr<std::string> next_prefix = DecodeRange(read_offset_, ids_.size());
  if (!next_prefix.ok()) return next_prefix.status();
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  prefix_text_ = *std::move(next_prefix);
  return delta;
}

}  // namespace sluice::tokenizer
