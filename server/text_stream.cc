#include "server/text_stream.h"

#include <algorithm>

namespace sluice::server {

TextStream::TextStream(const tokenizer::Tokenizer* tokenizer, std::vector<std::string> stop_strings)
    : stop_strings_(std::move(stop_strings)) {
  if (tokenizer != nullptr) detokenizer_.emplace(*tokenizer, /*skip_special_tokens=*/true);
  for (const auto& s : stop_strings_) max_stop_len_ = std::max(max_stop_len_, s.size());
}

absl::StatusOr<std::string> TextStream::Push(const std::vector<int32_t>& tokens) {
  if (stopped_ || !detokenizer_) return std::string();
  for (int32_t id : tokens) {
    auto delta = detokenizer_->Push(id);
    if (!delta.ok()) return delta.status();
    pending_ += *delta;
  }
  return Release(/*final=*/false);
}

std::string TextStream::Finish() {
  if (stopped_ || !detokenizer_) return std::string();
  pending_ += detokenizer_->Finish();
  return Release(/*final=*/true);
}

std::string TextStream::Release(bool final) {
  // Earliest complete stop string in what is pending. Text before pending_ was already
  // checked: a match cannot start there, since up to max_stop_len_ - 1 bytes were held.
  size_t match = std::string::npos;
  for (const auto& s : stop_strings_) {
    if (s.empty()) continue;
    const size_t at = pending_.find(s);
    if (at != std::string::npos) match = std::min(match, at);
  }
  if (match != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, match);
    pending_.clear();
    return out;
  }
  if (final || max_stop_len_ == 0) {
    std::string out;
    out.swap(pending_);
    return out;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const auto& s : stop_strings_) {
    for (size_t len = std::min(s.size() - 1, pending_.size()); len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  // Never split a UTF-8 sequence: move the cut left to a character boundary.
  size_t cut = pending_.size() - hold;
  while (cut > 0 && cut < pending_.size() && (static_cast<unsigned char>(pending_[cut]) & 0xC0) == 0x80) --cut;
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return out;
}

}  // namespace sluice::server
