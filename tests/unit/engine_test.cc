// The engine as a library: admission limits, cancellation, deadlines, draining and
// preemption by recompute, each checked for the one-final-event and all-blocks-free
// invariants. Uses the tiny llama fixture so recomputed tokens can be checked too.
#include "engine/engine.h"

#include <memory>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/golden/fixture.h"

namespace sluice::engine {
namespace {

struct Outcome {
  std::vector<int32_t> tokens;
  absl::Status status;
  int finals = 0;
  FinishReason reason = FinishReason::kNone;
  UsageStats usage;
};

Outcome Drain(RequestChannel& channel) {
  Outcome out;
  RequestEvent event;
  while (channel.PopWait(&event, absl::Now() + absl::Seconds(60))) {
    out.tokens.insert(out.tokens.end(), event.tokens.begin(), event.tokens.end());
    if (event.final) {
      ++out.finals;
      out.status = event.status;
      out.reason = event.finish_reason;
      out.usage = event.usage;
      // Nothing may follow the final event.
      EXPECT_FALSE(channel.PopWait(&event, absl::Now() + absl::Milliseconds(20)));
      return out;
    }
  }
  out.status = absl::DeadlineExceededError("test timed out waiting for a final event");
  return out;
}

GenerationRequest Greedy(const std::vector<int32_t>& ids, int32_t n) {
  GenerationRequest r;
  r.prompt = ids;
  r.stopping.max_tokens = n;
  r.stopping.ignore_eos = true;
  return r;
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto f = testing::LoadGoldenFixture("llama_f32");
    ASSERT_TRUE(f.ok()) << f.status();
    fixture_ = *std::move(f);
  }
  std::unique_ptr<Engine> Make(EngineOptions o) {
    o.model_dir = fixture_.dir;
    auto e = Engine::Create(o);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? *std::move(e) : nullptr;
  }
  void ExpectAllFree(Engine& e) {
    ASSERT_TRUE(e.WaitIdle(absl::Seconds(10)));
    auto s = e.Stats();
    EXPECT_EQ(s.free_blocks, s.total_blocks);
    EXPECT_EQ(s.running, 0);
    EXPECT_EQ(s.waiting, 0);
  }
  testing::GoldenFixture fixture_;
};

TEST_F(EngineTest, StartupFailsClearlyWhenOneSequenceCannotFit) {
  EngineOptions o;
  o.model_dir = fixture_.dir;
  o.kv_cache_memory = 4096;
  auto e = Engine::Create(o);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(e.status().message().find("kv_cache_memory"), absl::string_view::npos) << e.status();
}

TEST_F(EngineTest, ValidationRejectsBeforeQueueing) {
  auto e = Make({});
  auto ch = std::make_shared<RequestChannel>();
  EXPECT_EQ(e->Submit(Greedy({}, 4), ch).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(e->Submit(Greedy({1, 400}, 4), ch).code(), absl::StatusCode::kInvalidArgument);
  auto too_long = e->Submit(Greedy({1, 2}, 300), ch);
  EXPECT_EQ(too_long.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_long.message().find("256"), absl::string_view::npos) << too_long;
  // A dense Llama supports only skip_layers among the budget controls.
  GenerationRequest budget = Greedy({1}, 2);
  budget.budget.experts_per_token = 1;
  auto unsupported = e->Submit(budget, ch);
  EXPECT_EQ(unsupported.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(unsupported.message().find("experts_per_token"), absl::string_view::npos);
  EXPECT_NE(unsupported.message().find("supports are: skip_layers"), absl::string_view::npos) << unsupported;
  budget.budget = {};
  budget.budget.skip_layers.push_back({1, 3});
  EXPECT_EQ(e->Submit(budget, ch).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ch->finished());  // nothing was queued, so no event either
}

TEST_F(EngineTest, FullQueueAnswersResourceExhaustedAtOnce) {
  EngineOptions o;
  o.max_num_seqs = 1;
  o.max_queue = 1;
  auto e = Make(o);
  std::vector<std::shared_ptr<RequestChannel>> accepted;
  int rejected = 0;
  for (int i = 0; i < 4; ++i) {
    auto ch = std::make_shared<RequestChannel>();
    absl::Status s = e->Submit(Greedy({1, 2, 3}, 200), ch);
    if (s.ok()) {
      accepted.push_back(ch);
    } else {
      EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
      EXPECT_NE(s.message().find("max_queue=1"), absl::string_view::npos) << s;
      ++rejected;
    }
  }
  EXPECT_GE(rejected, 2);  // at most one running and one queued
  for (auto& ch : accepted) {
    Outcome out = Drain(*ch);
    EXPECT_TRUE(out.status.ok()) << out.status;
    EXPECT_EQ(out.tokens.size(), 200u);
  }
  ExpectAllFree(*e);
}

TEST_F(EngineTest, CancelWhileQueuedAndWhileRunningFreesEverything) {
  EngineOptions o;
  o.max_num_seqs = 1;
  auto e = Make(o);
  auto running = std::make_shared<RequestChannel>();
  auto queued = std::make_shared<RequestChannel>();
  ASSERT_TRUE(e->Submit(Greedy({1, 2, 3}, 250), running).ok());
  ASSERT_TRUE(e->Submit(Greedy({4, 5}, 10), queued).ok());
  queued->Cancel();
  RequestEvent first;
  ASSERT_TRUE(running->PopWait(&first, absl::Now() + absl::Seconds(30)));
  running->Cancel();
  Outcome a = Drain(*running), b = Drain(*queued);
  EXPECT_EQ(a.status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(b.status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(a.finals, 1);
  EXPECT_EQ(b.finals, 1);
  EXPECT_TRUE(b.tokens.empty());  // never started
  ExpectAllFree(*e);
}

TEST_F(EngineTest, DeadlinePassesWhileQueuedAndWhileRunning) {
  EngineOptions o;
  o.max_num_seqs = 1;
  auto e = Make(o);
  auto blocker = std::make_shared<RequestChannel>();
  auto queued = std::make_shared<RequestChannel>();
  ASSERT_TRUE(e->Submit(Greedy({1, 2, 3}, 250), blocker).ok());
  GenerationRequest late = Greedy({4, 5}, 10);
  late.deadline = absl::Now() + absl::Milliseconds(1);
  ASSERT_TRUE(e->Submit(late, queued).ok());
  Outcome q = Drain(*queued);
  EXPECT_EQ(q.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(q.tokens.empty()) << "an expired request must never start";
  EXPECT_TRUE(Drain(*blocker).status.ok());

  GenerationRequest slow = Greedy({1, 2, 3}, 250);
  slow.deadline = absl::Now() + absl::Milliseconds(30);
  auto running = std::make_shared<RequestChannel>();
  ASSERT_TRUE(e->Submit(slow, running).ok());
  Outcome r = Drain(*running);
  // Either it finished inside 30 ms or it was stopped with DEADLINE_EXCEEDED.
  if (!r.status.ok()) {
    EXPECT_EQ(r.status.code(), absl::StatusCode::kDeadlineExceeded);
  }
  ExpectAllFree(*e);
}

TEST_F(EngineTest, DrainingRefusesNewWorkButFinishesOld) {
  auto e = Make({});
  auto ch = std::make_shared<RequestChannel>();
  ASSERT_TRUE(e->Submit(Greedy({1, 2, 3}, 50), ch).ok());
  e->StartDrain();
  EXPECT_EQ(e->Submit(Greedy({1}, 5), std::make_shared<RequestChannel>()).code(),
            absl::StatusCode::kUnavailable);
  Outcome out = Drain(*ch);
  EXPECT_TRUE(out.status.ok());
  EXPECT_EQ(out.tokens.size(), 50u);
}

TEST_F(EngineTest, PreemptionByRecomputeKeepsGreedyTokensExact) {
  // A cache that holds exactly one full-length sequence forces preemptions when many
  // long sequences run; recomputed sequences must still produce transformers' tokens.
  EngineOptions o;
  o.block_size = 16;
  o.max_model_len = 256;
  o.kv_cache_memory = 16 * 3 * 2 * 2 * 16 * 4 * (256 / 16);  // blocks for one sequence
  auto e = Make(o);
  std::vector<std::shared_ptr<RequestChannel>> channels;
  const int kCopies = 3;
  for (int c = 0; c < kCopies; ++c) {
    for (const auto& p : fixture_.prompts) {
      channels.push_back(std::make_shared<RequestChannel>());
      // Long continuations so contexts grow past what the cache holds together.
      GenerationRequest r = Greedy(p.ids, 120);
      r.priority = c;
      ASSERT_TRUE(e->Submit(r, channels.back()).ok());
    }
  }
  size_t i = 0;
  for (int c = 0; c < kCopies; ++c) {
    for (const auto& p : fixture_.prompts) {
      Outcome out = Drain(*channels[i++]);
      ASSERT_TRUE(out.status.ok()) << out.status;
      ASSERT_EQ(out.tokens.size(), 120u);
      EXPECT_EQ(std::vector<int32_t>(out.tokens.begin(), out.tokens.begin() + p.greedy.size()), p.greedy);
    }
  }
  EXPECT_GT(e->Stats().preemptions, 0u) << "the test did not exercise preemption";
  ExpectAllFree(*e);
}

}  // namespace
}  // namespace sluice::engine
