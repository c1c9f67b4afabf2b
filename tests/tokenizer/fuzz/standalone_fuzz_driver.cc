// A tiny stand-in for libFuzzer so the fuzz targets run under any compiler
// (and in CI): feeds the seed inputs, then deterministic mutations of them,
// to LLVMFuzzerTestOneInput until the time budget is spent.
//
//   <target>_standalone [--seconds=N] [--max_len=N] [--split_lines]
//       SEED_FILE_OR_DIR...
// --split_lines makes every line of the seed files that follow a seed.
//
// A violated property aborts inside the target; the driver first writes the
// input to ./fuzz-crash-<target>.bin so it can be replayed with
// `<target>_standalone fuzz-crash-<target>.bin`.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

// Fragments that matter to tokenizers: special-token syntax, metaspace,
// byte-level characters, multi-byte and invalid UTF-8, JSON punctuation.
const char* const kDictionary[] = {"<|im_start|>",
                                   "<|endoftext|>",
                                   "<s>",
                                   "</s>",
                                   "<|end|>",
                                   "<tool>",
                                   "\xE2\x96\x81",
                                   "\xC4\xA0",
                                   " ",
                                   "  ",
                                   "\n",
                                   "\r\n",
                                   "\t",
                                   "'s",
                                   "123",
                                   "\xE4\xBD\xA0",
                                   "\xF0\x9F\xA6\x99",
                                   "\xCC\x81",
                                   "\xEF\xBF\xBD",
                                   "\xFF",
                                   "\xC3",
                                   "\xED\xA0\x80",
                                   "<0xE4>",
                                   "{",
                                   "}",
                                   "[",
                                   "]",
                                   "\"",
                                   ":",
                                   ",",
                                   "null",
                                   "true",
                                   "\"type\"",
                                   "\"Sequence\"",
                                   "\"Regex\"",
                                   "\\p{L}+",
                                   "(?!\\S)",
                                   "\"merges\"",
                                   "\"vocab\"",
                                   "\"added_tokens\"",
                                   "\"id\"",
                                   "-1",
                                   "2147483647",
                                   "1e9",
                                   "\x1e"};

std::string Mutate(const std::vector<std::string>& seeds, std::mt19937_64& rng, size_t max_len) {
  std::string s = seeds[rng() % seeds.size()];
  const int rounds = 1 + static_cast<int>(rng() % 8);
  for (int r = 0; r < rounds; ++r) {
    const size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
    switch (rng() % 7) {
      case 0:  // flip a bit
        if (!s.empty()) s[rng() % s.size()] ^= static_cast<char>(1u << (rng() % 8));
        break;
      case 1:  // random byte
        s.insert(pos, 1, static_cast<char>(rng() % 256));
        break;
      case 2: {  // delete a span
        if (s.empty()) break;
        const size_t at = rng() % s.size();
        s.erase(at, 1 + rng() % std::min<size_t>(16, s.size() - at));
        break;
      }
      case 3:  // dictionary word
        s.insert(pos, kDictionary[rng() % (sizeof(kDictionary) / sizeof(kDictionary[0]))]);
        break;
      case 4: {  // duplicate a span
        if (s.empty()) break;
        const size_t at = rng() % s.size();
        const std::string chunk = s.substr(at, 1 + rng() % 32);
        s.insert(pos, chunk);
        break;
      }
      case 5: {  // splice with another seed
        const std::string& other = seeds[rng() % seeds.size()];
        if (other.empty()) break;
        const size_t at = rng() % other.size();
        s.insert(pos, other.substr(at, 1 + rng() % 64));
        break;
      }
      case 6:  // random code point, valid UTF-8
      {
        uint32_t cp = static_cast<uint32_t>(rng() % 0x110000);
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
        std::string utf8;
        if (cp < 0x80) {
          utf8 += static_cast<char>(cp);
        } else if (cp < 0x800) {
          utf8 += static_cast<char>(0xC0 | (cp >> 6));
          utf8 += static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
          utf8 += static_cast<char>(0xE0 | (cp >> 12));
          utf8 += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
          utf8 += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
          utf8 += static_cast<char>(0xF0 | (cp >> 18));
          utf8 += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
          utf8 += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
          utf8 += static_cast<char>(0x80 | (cp & 0x3F));
        }
        s.insert(pos, utf8);
        break;
      }
    }
  }
  if (s.size() > max_len) s.resize(max_len);
  return s;
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 10;
  size_t max_len = 64 * 1024;
  std::vector<std::string> seeds;
  bool split_lines = false;
  auto add_seed = [&](std::string content) {
    if (!split_lines) {
      seeds.push_back(std::move(content));
      return;
    }
    size_t start = 0;
    while (start < content.size()) {
      size_t end = content.find('\n', start);
      if (end == std::string::npos) end = content.size();
      seeds.push_back(content.substr(start, end - start));
      start = end + 1;
    }
  };
  const std::string target = std::filesystem::path(argv[0]).filename().string();
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--seconds=", 0) == 0) {
      seconds = std::stod(arg.substr(10));
    } else if (arg.rfind("--max_len=", 0) == 0) {
      max_len = std::stoul(arg.substr(10));
    } else if (arg == "--split_lines") {
      split_lines = true;
    } else if (std::filesystem::is_directory(arg)) {
      // Sorted so that the run does not depend on directory order.
      std::vector<std::filesystem::path> paths;
      for (const auto& entry : std::filesystem::directory_iterator(arg)) {
        if (entry.is_regular_file()) paths.push_back(entry.path());
      }
      std::sort(paths.begin(), paths.end());
      for (const auto& path : paths) add_seed(ReadFile(path));
    } else if (std::filesystem::is_regular_file(arg)) {
      add_seed(ReadFile(arg));
    } else {
      std::fprintf(stderr, "no such seed: %s\n", arg.c_str());
      return 2;
    }
  }
  if (seeds.empty()) seeds.push_back("");
  const std::string crash_path = "fuzz-crash-" + target + ".bin";
  auto run = [&](const std::string& input) {
    // Written before every run so that an abort leaves the culprit behind;
    // cheap next to tokenizer work.
    std::ofstream(crash_path, std::ios::binary | std::ios::trunc) << input;
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
  };
  size_t runs = 0;
  for (const std::string& seed : seeds) {
    run(seed);
    ++runs;
  }
  std::mt19937_64 rng(0x5eed);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    run(Mutate(seeds, rng, max_len));
    ++runs;
  }
  std::filesystem::remove(crash_path);
  std::printf("%s: %zu inputs in %.0f s, no failures\n", target.c_str(), runs, seconds);
  return 0;
}
