// Unit checks of the server's API-key file, address and flag parsing; the daemon-level
// behaviour (every method gated, SIGHUP, TLS) is in tests/python/operations_test.py.
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "server/auth.h"
#include "server/metrics.h"

namespace sluice::server {
namespace {

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = (std::filesystem::temp_directory_path() / name).string();
  std::ofstream(path) << text;
  return path;
}

TEST(ApiKeysTest, ParsesKeysSkippingCommentsAndBlanks) {
  auto keys = ApiKeys::Load(WriteFile("sluice-keys-a", "# team a\n  alpha  \n\nbeta\n#gamma\n"));
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ((*keys)->size(), 2u);
  EXPECT_TRUE((*keys)->Accepts("Bearer alpha"));
  EXPECT_TRUE((*keys)->Accepts("Bearer beta"));
  EXPECT_FALSE((*keys)->Accepts("Bearer gamma"));  // commented out
  EXPECT_FALSE((*keys)->Accepts("alpha"));          // no scheme
  EXPECT_FALSE((*keys)->Accepts("Bearer alph"));    // prefix of a key
  EXPECT_FALSE((*keys)->Accepts("Bearer alphaa"));  // a key as prefix
  EXPECT_FALSE((*keys)->Accepts("Bearer "));
  EXPECT_FALSE((*keys)->Accepts(""));
}

TEST(ApiKeysTest, ReloadKeepsKeysOnError) {
  const std::string path = WriteFile("sluice-keys-b", "one\n");
  auto keys = ApiKeys::Load(path);
  ASSERT_TRUE(keys.ok());
  WriteFile("sluice-keys-b", "# emptied\n");
  absl::Status s = (*keys)->Reload();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--api_keys_file="), std::string::npos) << s;
  EXPECT_TRUE((*keys)->Accepts("Bearer one"));
  WriteFile("sluice-keys-b", "two\n");
  ASSERT_TRUE((*keys)->Reload().ok());
  EXPECT_FALSE((*keys)->Accepts("Bearer one"));
  EXPECT_TRUE((*keys)->Accepts("Bearer two"));
}

TEST(ApiKeysTest, MissingOrEmptyFileIsAnError) {
  EXPECT_FALSE(ApiKeys::Load("/nonexistent/sluice-keys").ok());
  EXPECT_FALSE(ApiKeys::Load(WriteFile("sluice-keys-c", "\n# none\n")).ok());
}

TEST(AuthTest, TlsFlagsMustBeConsistent) {
  EXPECT_FALSE(MakeServerCredentials({"cert.pem", "", ""}, nullptr, nullptr).ok());
  EXPECT_FALSE(MakeServerCredentials({"", "", "ca.pem"}, nullptr, nullptr).ok());
  auto missing = MakeServerCredentials({"/nonexistent/c.pem", "/nonexistent/k.pem", ""}, nullptr, nullptr);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("--tls_cert=/nonexistent/c.pem"), std::string::npos);
  EXPECT_TRUE(MakeServerCredentials({}, nullptr, nullptr).ok());
}

TEST(AuthTest, LoopbackAddresses) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:50051"));
  EXPECT_TRUE(IsLoopbackAddress("127.1.2.3:0"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:80"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:50051"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:50051"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:50051"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.1:50051"));
}

TEST(MetricsTest, ExpertMetricsModeParses) {
  EXPECT_EQ(ExpertMetricsMode::Parse("off")->kind, ExpertMetricsMode::kOff);
  EXPECT_EQ(ExpertMetricsMode::Parse("all")->kind, ExpertMetricsMode::kAll);
  auto top = ExpertMetricsMode::Parse("top:8");
  ASSERT_TRUE(top.ok());
  EXPECT_EQ(top->kind, ExpertMetricsMode::kTopN);
  EXPECT_EQ(top->top_n, 8);
  for (const char* bad : {"top:0", "top:", "top:-1", "top8", "some"}) {
    EXPECT_FALSE(ExpertMetricsMode::Parse(bad).ok()) << bad;
  }
}

TEST(MetricsTest, RejectReasonsFollowTheStatusCode) {
  EXPECT_EQ(RejectReasonOf(absl::ResourceExhaustedError("")), RejectReason::kQueueFull);
  EXPECT_EQ(RejectReasonOf(absl::UnavailableError("")), RejectReason::kDraining);
  EXPECT_EQ(RejectReasonOf(absl::DeadlineExceededError("")), RejectReason::kDeadline);
  EXPECT_EQ(RejectReasonOf(absl::InvalidArgumentError("")), RejectReason::kInvalid);
  EXPECT_EQ(RejectReasonOf(absl::FailedPreconditionError("")), RejectReason::kInvalid);
}

}  // namespace
}  // namespace sluice::server
