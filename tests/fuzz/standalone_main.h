// The driver of a fuzz target when it is not built as a libFuzzer target (a compiler other than
// clang, see CMakeLists.txt): it runs every corpus input given on the command line (files, or
// directories of files), then N deterministic mutations of them (flip, insert, delete, splice,
// repeat), each through LLVMFuzzerTestOneInput:
//   build/<target> [-n N] [-s SEED] tests/fuzz/<target>_corpus
// Any crash, sanitizer report or broken invariant (abort) is a finding. With libFuzzer
// (VIA_LIBFUZZER) this header defines nothing. Include it last, after defining VIA_FUZZ_NAME.
#pragma once

#ifndef VIA_LIBFUZZER
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace via_fuzz {

inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline void AddInputs(const std::string& path, std::vector<std::string>* corpus) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    std::fprintf(stderr, "%s: cannot read\n", path.c_str());
    std::exit(2);
  }
  if (!S_ISDIR(st.st_mode)) {
    corpus->push_back(ReadFile(path));
    return;
  }
  std::vector<std::string> names;
  if (DIR* d = opendir(path.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') names.push_back(path + "/" + e->d_name);
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());  // the same order, so the same mutations, every run
  for (const std::string& n : names) corpus->push_back(ReadFile(n));
}

inline void Run(const std::string& s) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

}  // namespace via_fuzz

int main(int argc, char** argv) {
  long iterations = 100000;
  unsigned seed = 1;
  std::vector<std::string> corpus;
  for (int a = 1; a < argc; ++a) {
    if (std::strcmp(argv[a], "-n") == 0 && a + 1 < argc) {
      iterations = std::atol(argv[++a]);
    } else if (std::strcmp(argv[a], "-s") == 0 && a + 1 < argc) {
      seed = unsigned(std::atol(argv[++a]));
    } else {
      via_fuzz::AddInputs(argv[a], &corpus);
    }
  }
  if (corpus.empty()) corpus.push_back(std::string());
  for (const std::string& c : corpus) via_fuzz::Run(c);
  std::mt19937 rng(seed);
  static const char kInteresting[] = " =\"\\\n:-[]{}#&*!|>'AZaz09._~\x7f\x80\xff";
  for (long it = 0; it < iterations; ++it) {
    std::string s = corpus[rng() % corpus.size()];
    int edits = 1 + int(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
      switch (rng() % 6) {
        case 0:
          if (pos < s.size()) s[pos] = char(rng());
          break;
        case 1:
          s.insert(pos, 1, kInteresting[rng() % (sizeof kInteresting - 1)]);
          break;
        case 2:
          if (pos < s.size()) s.erase(pos, 1 + rng() % 8);
          break;
        case 3: {
          const std::string& o = corpus[rng() % corpus.size()];
          size_t from = o.empty() ? 0 : rng() % o.size();
          s.insert(pos, o.substr(from, rng() % 32));
          break;
        }
        case 4:
          if (pos < s.size()) s[pos] = char(uint8_t(s[pos]) ^ (1u << (rng() % 8)));
          break;
        default:
          if (pos < s.size()) s.insert(pos, std::string(rng() % 3 == 0 ? 9000 : 3, s[pos]));
      }
    }
    via_fuzz::Run(s);
  }
  std::printf("%s: %zu corpus inputs and %ld mutations (seed %u): no finding\n", VIA_FUZZ_NAME,
              corpus.size(), iterations, seed);
  return 0;
}
#endif  // VIA_LIBFUZZER
