// Turns a request's generated token ids into text deltas: incremental detokenization
// (never a partial UTF-8 sequence) plus stop strings matched on the text. Text that
// could still be the start of a stop string is held back until it is known not to be.
#ifndef SLUICE_SERVER_TEXT_STREAM_H_
#define SLUICE_SERVER_TEXT_STREAM_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer/tokenizer.h"

namespace sluice::server {

class TextStream {
 public:
  TextStream(const tokenizer::Tokenizer* tokenizer, std::vector<std::string> stop_strings);

  // Adds generated tokens; returns the text now safe to send. After a stop string
  // matched, stopped() is true and the text up to (not including) it has been returned.
  absl::StatusOr<std::string> Push(const std::vector<int32_t>& tokens);
  // End of generation: whatever was held back.
  std::string Finish();
  bool stopped() const { return stopped_; }

 private:
  std::string Release(bool final);

  std::optional<tokenizer::IncrementalDetokenizer> detokenizer_;
  std::vector<std::string> stop_strings_;
  size_t max_stop_len_ = 0;
  std::string pending_;  // decoded but not yet sent
  bool stopped_ = false;
};

}  // namespace sluice::server

#endif  // SLUICE_SERVER_TEXT_STREAM_H_
