// Tokenizer throughput benchmark: single-thread Encode MB/s and load time of
// each reference tokenizer on a deterministic ~10 MB mixed-language corpus,
// optionally next to Hugging Face `tokenizers` (hf_peer.py) on the same
// corpus. Reports only; benchmarks never assert timings.
//
//   build/release/bin/tokenizer_bench [--corpus_mb=10] [--names=qwen3,llama3]
//       [--hf_peer=bench/tokenizer/hf_peer.py | --hf_peer=]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "engine/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, tokenizers_dir, SLUICE_BENCH_SHARED_TOKENIZERS_DIR,
          "Directory holding <name>/tokenizer.json.");
ABSL_FLAG(std::string, names, "qwen3,llama3,deepseek_v3,llama2", "Tokenizers to measure.");
ABSL_FLAG(double, corpus_mb, 10.0, "Corpus size in MB.");
ABSL_FLAG(std::string, corpus_out, "/tmp/sluice_tokenizer_bench_corpus.jsonl",
          "Where the corpus is written (JSON Lines) for the HF peer.");
ABSL_FLAG(std::string, seed_corpus, SLUICE_BENCH_TEST_CORPUS,
          "The committed test corpus, mixed into the benchmark corpus.");
ABSL_FLAG(std::string, hf_peer, SLUICE_BENCH_HF_PEER,
          "hf_peer.py to run on the same corpus; empty to skip.");
ABSL_FLAG(std::string, python, "python3", "Python interpreter for --hf_peer.");
ABSL_FLAG(int, passes, 2, "Encode passes per tokenizer; the fastest is reported.");

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Natural-language and code snippets; the generator recombines them with
// numbers and lines of the (random, many-script) test corpus, so the word
// distribution has both a hot head and a long tail of cache misses.
const std::vector<std::string>& Sentences() {
  static const std::vector<std::string> sentences = {
      "The scheduler admits a request only when enough KV blocks are free. ",
      "Tokenization happens before admission so that prompt length is known exactly. ",
      "In 2024, the model processed 1,234,567 requests with a p99 latency of 87.5 ms. ",
      "She said: \"I'll be there by 10:30, don't wait for me!\" ",
      "Mixture-of-experts layers route each token to the top-k experts. ",
      "def softmax(x):\n    e = np.exp(x - x.max())\n    return e / e.sum()\n",
      "for (int i = 0; i < n; ++i) {\n  out[i] = a[i] * b[i] + c;\n}\n",
      "{\"model\": \"qwen3\", \"max_tokens\": 256, \"temperature\": 0.7}\n",
      "大规模语言模型的推理服务需要高效的批处理和内存管理。",
      "今天的天气很好，我们去公园散步吧。",
      "東京は日本の首都であり、多くの人が住んでいます。",
      "トークナイザーの速度はサーバーのスループットに影響します。",
      "서울은 대한민국의 수도이며 인구가 많습니다. ",
      "Москва — столица России, крупнейший город страны. ",
      "Быстрая токенизация важна для сервера вывода. ",
      "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας. ",
      "القاهرة هي عاصمة مصر وأكبر مدنها. ",
      "ירושלים היא עיר עתיקה עם היסטוריה ארוכה. ",
      "दिल्ली भारत की राजधानी है और बहुत बड़ा शहर है। ",
      "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย ",
      "La tokenisation rapide réduit la latence du premier jeton. ",
      "Die Geschwindigkeit des Tokenizers beeinflusst den Durchsatz. ",
      "El servidor procesa las solicitudes en lotes irregulares. ",
      "Emoji: 👍🏽 🎉 👨‍👩‍👧 ❤️ 🚀 ",
      "   \t  indented line with trailing spaces   \n",
  };
  return sentences;
}

std::vector<std::string> BuildCorpus(size_t target_bytes, const std::vector<std::string>& seed) {
  // mt19937_64 output is specified by the standard, so the corpus is the same
  // everywhere (distributions are not, hence the plain modulo).
  std::mt19937_64 rng(20261128);
  const auto& sentences = Sentences();
  std::vector<std::string> docs;
  size_t total = 0;
  while (total < target_bytes) {
    std::string doc;
    const size_t segments = 20 + rng() % 40;
    for (size_t s = 0; s < segments; ++s) {
      const uint64_t r = rng() % 100;
      if (r < 65) {
        doc += sentences[rng() % sentences.size()];
      } else if (r < 80 && !seed.empty()) {
        doc += seed[rng() % seed.size()];
        doc += ' ';
      } else {
        doc += absl::StrCat(rng() % 100000, rng() % 2 ? ". " : " items, ");
      }
    }
    total += doc.size();
    docs.push_back(std::move(doc));
  }
  return docs;
}

std::vector<std::string> ReadSeedCorpus(const std::string& path) {
  std::vector<std::string> seed;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    try {
      seed.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
    } catch (const nlohmann::json::exception&) {
      // A damaged seed line only makes the corpus smaller.
    }
  }
  return seed;
}

struct Result {
  std::string name;
  double load_s = 0;
  double mb_per_s = 0;
  size_t tokens = 0;
};

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::vector<std::string> seed = ReadSeedCorpus(absl::GetFlag(FLAGS_seed_corpus));
  const auto target = static_cast<size_t>(absl::GetFlag(FLAGS_corpus_mb) * 1e6);
  const std::vector<std::string> docs = BuildCorpus(target, seed);
  size_t bytes = 0;
  for (const auto& d : docs) bytes += d.size();
  {
    std::ofstream out(absl::GetFlag(FLAGS_corpus_out));
    for (const auto& d : docs) out << nlohmann::json{{"text", d}}.dump() << '\n';
  }
  std::printf("corpus: %zu documents, %.2f MB (seed lines: %zu), written to %s\n", docs.size(),
              bytes / 1e6, seed.size(), absl::GetFlag(FLAGS_corpus_out).c_str());

  std::vector<Result> results;
  const std::vector<std::string> names = absl::StrSplit(absl::GetFlag(FLAGS_names), ',');
  for (const std::string& name : names) {
    Result result;
    result.name = name;
    const Clock::time_point load_start = Clock::now();
    absl::StatusOr<std::unique_ptr<sluice::tokenizer::Tokenizer>> tok =
        sluice::tokenizer::Tokenizer::LoadFromDirectory(absl::GetFlag(FLAGS_tokenizers_dir) + "/" +
                                                        name);
    result.load_s = Seconds(load_start);
    if (!tok.ok()) {
      std::printf("%-12s load failed: %s\n", name.c_str(), tok.status().ToString().c_str());
      continue;
    }
    double best = 1e30;
    for (int pass = 0; pass < std::max(1, absl::GetFlag(FLAGS_passes)); ++pass) {
      size_t tokens = 0;
      const Clock::time_point start = Clock::now();
      for (const auto& doc : docs) {
        absl::StatusOr<std::vector<int32_t>> ids = (*tok)->Encode(doc, false);
        if (!ids.ok()) {
          std::printf("encode failed: %s\n", ids.status().ToString().c_str());
          return 1;
        }
        tokens += ids->size();
      }
      best = std::min(best, Seconds(start));
      result.tokens = tokens;
    }
    result.mb_per_s = bytes / 1e6 / best;
    std::printf("%-12s sluice: load %.3f s, encode %.2f MB/s (%zu tokens)\n", name.c_str(),
                result.load_s, result.mb_per_s, result.tokens);
    std::fflush(stdout);
    results.push_back(result);
  }

  const std::string peer = absl::GetFlag(FLAGS_hf_peer);
  if (peer.empty() || !std::ifstream(peer).good()) {
    std::printf("HF peer skipped (%s)\n", peer.empty() ? "--hf_peer empty" : "script not found");
    return 0;
  }
  const std::string command = absl::StrCat(
      absl::GetFlag(FLAGS_python), " '", peer, "' --corpus '", absl::GetFlag(FLAGS_corpus_out),
      "' --tokenizers '", absl::GetFlag(FLAGS_tokenizers_dir), "' --names '",
      absl::GetFlag(FLAGS_names), "' --passes ", absl::GetFlag(FLAGS_passes));
  std::printf("running HF peer: %s\n", command.c_str());
  std::fflush(stdout);
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    std::printf("HF peer could not start\n");
    return 0;
  }
  std::string output;
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  if (pclose(pipe) != 0) {
    std::printf("HF peer failed (is `tokenizers` installed?)\n%s", output.c_str());
    return 0;
  }
  std::printf("\n%-12s %10s %10s %8s %10s %10s %s\n", "tokenizer", "sluice", "HF", "speedup",
              "load", "HF load", "tokens");
  for (absl::string_view line : absl::StrSplit(output, '\n', absl::SkipEmpty())) {
    nlohmann::json peer_result;
    try {
      peer_result = nlohmann::json::parse(line.begin(), line.end());
    } catch (const nlohmann::json::exception&) {
      continue;
    }
    const std::string name = peer_result.value("name", "");
    for (const Result& r : results) {
      if (r.name != name) continue;
      const double hf = peer_result.value("mb_per_s", 0.0);
      const size_t hf_tokens = peer_result.value("tokens", size_t{0});
      std::printf("%-12s %7.2f MB/s %6.2f MB/s %7.2fx %8.3f s %8.3f s %s\n", name.c_str(),
                  r.mb_per_s, hf, hf > 0 ? r.mb_per_s / hf : 0.0, r.load_s,
                  peer_result.value("load_s", 0.0),
                  hf_tokens == r.tokens ? "same count" : "COUNT DIFFERS");
    }
  }
  return 0;
}
