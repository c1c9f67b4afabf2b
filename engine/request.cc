#include "engine/request.h"

#include "absl/time/clock.h"

namespace sluice::engine {

void RequestChannel::Push(RequestEvent event) {
  Listener listener;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (final_pushed_) return;  // exactly one final event, nothing after it
    final_pushed_ = event.final;
    event.time = absl::Now();
    events_.push_back(std::move(event));
    listener = listener_;
  }
  cv_.notify_all();
  if (listener) listener();
}

bool RequestChannel::TryPop(RequestEvent* event) {
  std::lock_guard<std::mutex> lock(mu_);
  if (events_.empty()) return false;
  *event = std::move(events_.front());
  events_.pop_front();
  return true;
}

bool RequestChannel::PopWait(RequestEvent* event, absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  while (events_.empty()) {
    if (deadline == absl::InfiniteFuture()) {
      cv_.wait(lock);
    } else if (cv_.wait_until(lock, absl::ToChronoTime(deadline)) == std::cv_status::timeout &&
               events_.empty()) {
      return false;
    }
  }
  *event = std::move(events_.front());
  events_.pop_front();
  return true;
}

void RequestChannel::SetListener(Listener listener) {
  std::lock_guard<std::mutex> lock(mu_);
  listener_ = std::move(listener);
}

bool RequestChannel::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return final_pushed_;
}

}  // namespace sluice::engine
