#include "engine/sampling/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace sluice::engine {
namespace {

TEST(SamplerTest, ValidationNamesTheField) {
  auto check = [](SamplingOptions o, const char* field) {
    absl::Status s = ValidateSamplingOptions(o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), absl::string_view::npos) << s.message();
  };
  SamplingOptions o;
  EXPECT_TRUE(ValidateSamplingOptions(o).ok());
  o = {}; o.temperature = -0.5f; check(o, "temperature");
  o = {}; o.temperature = NAN; check(o, "temperature");
  o = {}; o.top_p = 0.f; check(o, "top_p");
  o = {}; o.top_p = 1.01f; check(o, "top_p");
  o = {}; o.top_k = -1; check(o, "top_k");
  o = {}; o.min_p = 1.f; check(o, "min_p");
  o = {}; o.repetition_penalty = 0.f; check(o, "repetition_penalty");
  o = {}; o.presence_penalty = INFINITY; check(o, "presence_penalty");
}

TEST(SamplerTest, GreedyTakesTheArgmaxAndHonoursBans) {
  Sampler sampler(SamplingOptions{}, -1);
  std::vector<float> logits = {0.1f, 3.f, 2.f, -1.f};
  EXPECT_EQ(sampler.Sample(absl::MakeSpan(logits), {}, 0, {}, 0, nullptr), 1);
  logits = {0.1f, 3.f, 2.f, -1.f};
  const int32_t banned[] = {1};
  EXPECT_EQ(sampler.Sample(absl::MakeSpan(logits), {}, 0, banned, 0, nullptr), 2);
}

TEST(SamplerTest, SeededStreamDependsOnlyOnSeedAndStep) {
  SamplingOptions o;
  o.temperature = 1.f;
  o.seed = 42;
  std::vector<int32_t> first, again;
  for (int step = 0; step < 50; ++step) {
    std::vector<float> logits(16, 0.f);
    Sampler s(o, -1);
    first.push_back(s.Sample(absl::MakeSpan(logits), {}, 0, {}, step, nullptr));
  }
  Sampler reused(o, -1);  // one sampler across steps gives the same stream
  for (int step = 0; step < 50; ++step) {
    std::vector<float> logits(16, 0.f);
    again.push_back(reused.Sample(absl::MakeSpan(logits), {}, 0, {}, step, nullptr));
  }
  EXPECT_EQ(first, again);
  o.seed = 43;
  std::vector<int32_t> other;
  for (int step = 0; step < 50; ++step) {
    std::vector<float> logits(16, 0.f);
    Sampler s(o, -1);
    other.push_back(s.Sample(absl::MakeSpan(logits), {}, 0, {}, step, nullptr));
  }
  EXPECT_NE(first, other);
}

TEST(SamplerTest, FrequenciesFollowTheSoftmax) {
  SamplingOptions o;
  o.temperature = 0.5f;
  o.seed = 7;
  const std::vector<float> base = {1.f, 0.5f, 0.f, -0.5f};
  std::vector<double> p(4);
  double z = 0;
  for (int i = 0; i < 4; ++i) z += p[i] = std::exp(base[i] / 0.5);
  std::map<int32_t, int> counts;
  const int n = 20000;
  Sampler s(o, -1);
  for (int step = 0; step < n; ++step) {
    std::vector<float> logits = base;
    ++counts[s.Sample(absl::MakeSpan(logits), {}, 0, {}, step, nullptr)];
  }
  for (int i = 0; i < 4; ++i) {
    const double expected = p[i] / z;
    const double sigma = std::sqrt(expected * (1 - expected) / n);
    EXPECT_NEAR(counts[i] / double(n), expected, 5 * sigma) << "token " << i;
  }
}

TEST(SamplerTest, TopKTopPAndMinPCutTheTail) {
  const std::vector<float> base = {2.f, 1.9f, 0.f, -5.f};
  auto distinct = [&](SamplingOptions o) {
    std::map<int32_t, int> seen;
    Sampler s(o, -1);
    for (int step = 0; step < 2000; ++step) {
      std::vector<float> logits = base;
      ++seen[s.Sample(absl::MakeSpan(logits), {}, 0, {}, step, nullptr)];
    }
    return seen;
  };
  SamplingOptions o;
  o.temperature = 1.f;
  o.top_k = 2;
  auto k = distinct(o);
  EXPECT_EQ(k.size(), 2u);
  EXPECT_TRUE(k.count(0) && k.count(1));
  o = {};
  o.temperature = 1.f;
  o.top_p = 0.3f;  // token 0 alone has ~0.47 of the mass
  EXPECT_EQ(distinct(o).size(), 1u);
  o = {};
  o.temperature = 1.f;
  o.min_p = 0.5f;  // token 2 has e^-2 ≈ 0.14 of the best probability
  auto m = distinct(o);
  EXPECT_EQ(m.size(), 2u);
  EXPECT_FALSE(m.count(2));
}

TEST(SamplerTest, PenaltiesDiscourageRepeats) {
  std::vector<int32_t> history = {5, 1, 1, 1};  // prompt {5}, generated {1, 1, 1}
  SamplingOptions o;
  o.frequency_penalty = 0.5f;
  Sampler s(o, -1);
  std::vector<float> logits = {0.f, 1.f, 0.f, 0.f, 0.f, 0.f};
  EXPECT_NE(s.Sample(absl::MakeSpan(logits), history, 3, {}, 0, nullptr), 1);
  o = {};
  o.repetition_penalty = 4.f;
  Sampler r(o, -1);
  logits = {0.f, 0.f, 0.f, 0.f, 0.f, 1.f};  // token 5 is in the prompt
  logits[2] = 0.5f;
  EXPECT_EQ(r.Sample(absl::MakeSpan(logits), history, 3, {}, 0, nullptr), 2);
}

TEST(SamplerTest, LogprobsAreTheModelsLogSoftmax) {
  Sampler s(SamplingOptions{}, 2);
  std::vector<float> logits = {1.f, 2.f, 3.f};
  TokenLogprob lp;
  EXPECT_EQ(s.Sample(absl::MakeSpan(logits), {}, 0, {}, 0, &lp), 2);
  const double z = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  EXPECT_NEAR(lp.logprob, 3.0 - z, 1e-5);
  ASSERT_EQ(lp.top.size(), 2u);
  EXPECT_EQ(lp.top[0].first, 2);
  EXPECT_EQ(lp.top[1].first, 1);
  EXPECT_NEAR(lp.top[1].second, 2.0 - z, 1e-5);
}

}  // namespace
}  // namespace sluice::engine
