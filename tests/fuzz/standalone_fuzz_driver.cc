// A tiny stand-in for libFuzzer so the fuzz targets run under any compiler
// (and in CI): feeds the seed inputs, then deterministic mutations of them,
// to LLVMFuzzerTestOneInput until the time budget is spent. Every fuzz target
// (tests/fuzz, tests/tokenizer/fuzz) links it for its `<target>_standalone`.
//
//   <target>_standalone [--seconds=N] [--max_len=N] [--dict=FILE] [--split_lines]
//       SEED_FILE_OR_DIR...
// --split_lines makes every line of the seed files that follow a seed.
// --dict (or libFuzzer's spelling -dict=) adds the entries of a libFuzzer
// dictionary file (`"word"` or `name="word"` per line, \xNN escapes) to the
// built-in words the mutator inserts.
// --seconds=0 only runs the seeds (replays a crash file).
// --timeout=N (default 30) fails an input that runs longer than N seconds.
//
// When an input fails (a violated property aborts inside the target; a sanitizer
// report, an uncaught exception or a timeout), the driver writes it to
// ./fuzz-crash-<target>.bin so it can be replayed with
// `<target>_standalone --seconds=0 fuzz-crash-<target>.bin`.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if __has_include(<sanitizer/common_interface_defs.h>)
#include <sanitizer/common_interface_defs.h>
#define SLUICE_HAVE_SANITIZER_INTERFACE 1
#endif

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

// Integers worth writing over binary fields (lengths, varints, offsets).
const uint64_t kInteresting[] = {0,          1,          0x7F,       0x80,       0xFF,
                                 0x7FFF,     0x8000,     0xFFFF,     0x7FFFFFFF, 0x80000000,
                                 0xFFFFFFFF, 0x100000000ull, 0x7FFFFFFFFFFFFFFFull,
                                 0x8000000000000000ull, 0xFFFFFFFFFFFFFFFFull};

std::string Mutate(const std::vector<std::string>& seeds, const std::vector<std::string>& dict,
                   std::mt19937_64& rng, size_t max_len) {
  std::string s = seeds[rng() % seeds.size()];
  const int rounds = 1 + static_cast<int>(rng() % 8);
  for (int r = 0; r < rounds; ++r) {
    const size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
    switch (rng() % 8) {
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
        s.insert(pos, dict[rng() % dict.size()]);
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
      case 7: {  // overwrite 1, 2, 4 or 8 bytes with an interesting little-endian integer
        if (s.empty()) break;
        const size_t width = size_t{1} << (rng() % 4);
        uint64_t v = kInteresting[rng() % (sizeof(kInteresting) / sizeof(kInteresting[0]))];
        if (rng() % 4 == 0) v += (rng() % 3) - 1;  // and its neighbours
        const size_t at = rng() % s.size();
        for (size_t i = 0; i < width && at + i < s.size(); ++i) s[at + i] = static_cast<char>(v >> (8 * i));
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

// Reads a libFuzzer dictionary: one `"word"` or `name="word"` per line, `#` comments,
// escapes \\ \" and \xNN. False on a malformed line.
bool ReadDictionary(const std::string& path, std::vector<std::string>* out) {
  std::ifstream in(path);
  if (!in) return false;
  std::string line;
  while (std::getline(in, line)) {
    const size_t first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    const size_t open = line.find('"');
    const size_t close = line.rfind('"');
    if (open == std::string::npos || close <= open) return false;
    std::string word;
    for (size_t i = open + 1; i < close; ++i) {
      if (line[i] != '\\' || i + 1 >= close) {
        word += line[i];
      } else if (line[i + 1] == 'x' && i + 3 < close) {
        word += static_cast<char>(std::stoi(line.substr(i + 2, 2), nullptr, 16));
        i += 3;
      } else {
        word += line[++i];
      }
    }
    if (!word.empty()) out->push_back(std::move(word));
  }
  return true;
}

// The input being run, for the failure handlers; they only use async-signal-safe calls.
char g_crash_path[4096];
const char* volatile g_input = nullptr;
volatile size_t g_input_size = 0;
std::atomic<uint64_t> g_run_id{0};  // odd while an input runs

void WriteCrashInput() {
  static std::atomic<bool> written{false};
  if (g_input == nullptr || written.exchange(true)) return;
  const int fd = ::open(g_crash_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  const char* p = g_input;
  size_t left = p == nullptr ? 0 : g_input_size;
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n <= 0) break;
    p += n;
    left -= static_cast<size_t>(n);
  }
  ::close(fd);
  static const char kMessage[] = "\nstandalone fuzz driver: the failing input is in ";
  (void)!::write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
  (void)!::write(STDERR_FILENO, g_crash_path, std::strlen(g_crash_path));
  (void)!::write(STDERR_FILENO, "\n", 1);
}

void OnAbort(int sig) {
  WriteCrashInput();
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

}  // namespace

// Sanitizer defaults for these binaries, so that a run by hand behaves as under CTest
// (ASAN_OPTIONS / UBSAN_OPTIONS still override them): every report is fatal and ends
// in abort(), which the SIGABRT handler turns into a crash file. UBSan needs that: with
// gcc it keeps its own copy of the death callback that __sanitizer_set_death_callback
// does not reach.
extern "C" const char* __asan_default_options() { return "detect_leaks=1:abort_on_error=1"; }
extern "C" const char* __ubsan_default_options() {
  return "halt_on_error=1:abort_on_error=1:print_stacktrace=1";
}

int main(int argc, char** argv) {
  double seconds = 10;
  double timeout = 30;
  size_t max_len = 64 * 1024;
  std::vector<std::string> seeds;
  std::vector<std::string> dict(std::begin(kDictionary), std::end(kDictionary));
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
    } else if (arg.rfind("--timeout=", 0) == 0) {
      timeout = std::stod(arg.substr(10));
    } else if (arg.rfind("--max_len=", 0) == 0) {
      max_len = std::stoul(arg.substr(10));
    } else if (arg.rfind("--dict=", 0) == 0 || arg.rfind("-dict=", 0) == 0) {
      const std::string path = arg.substr(arg.find('=') + 1);
      if (!ReadDictionary(path, &dict)) {
        std::fprintf(stderr, "cannot read dictionary %s\n", path.c_str());
        return 2;
      }
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
  // A failing input is written out only when it fails: from the sanitizers' death
  // callback (ASan, UBSan, LSan reports), from a SIGABRT handler (failed checks,
  // uncaught exceptions, abort_on_error) and from a watchdog (timeouts).
  const std::string crash_path = "fuzz-crash-" + target + ".bin";
  std::snprintf(g_crash_path, sizeof(g_crash_path), "%s", crash_path.c_str());
  std::filesystem::remove(crash_path);
#ifdef SLUICE_HAVE_SANITIZER_INTERFACE
  __sanitizer_set_death_callback(WriteCrashInput);
#endif
  ::signal(SIGABRT, OnAbort);
  std::thread([timeout] {
    uint64_t seen = 0;
    auto since = std::chrono::steady_clock::now();
    while (true) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      const uint64_t id = g_run_id.load(std::memory_order_acquire);
      const auto now = std::chrono::steady_clock::now();
      if (id != seen || id % 2 == 0) {
        seen = id;
        since = now;
      } else if (std::chrono::duration<double>(now - since).count() > timeout) {
        std::fprintf(stderr, "standalone fuzz driver: an input ran for more than %.0f s (--timeout)\n", timeout);
        std::abort();  // OnAbort writes the input
      }
    }
  }).detach();
  auto run = [&](const std::string& input) {
    g_input = input.data();
    g_input_size = input.size();
    g_run_id.fetch_add(1, std::memory_order_release);
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
    g_run_id.fetch_add(1, std::memory_order_release);
  };
  const auto start = std::chrono::steady_clock::now();
  size_t runs = 0;
  for (const std::string& seed : seeds) {
    run(seed);
    ++runs;
  }
  std::mt19937_64 rng(0x5eed);
  const auto deadline = start + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    run(Mutate(seeds, dict, rng, max_len));
    ++runs;
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  g_input = nullptr;  // leaks found at exit belong to no single input
  g_input_size = 0;
  std::printf("%s: %zu inputs (%zu seeds) in %.1f s, %.0f/s, no failures\n", target.c_str(), runs,
              seeds.size(), elapsed, elapsed > 0 ? runs / elapsed : 0.0);
  std::fflush(stdout);  // before exit-time checks (LeakSanitizer) that may abort
  return 0;
}
