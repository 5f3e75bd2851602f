// Fuzz target for the SAM v3 reply parser and the line handshakes (overlays/sam.h).
//
// With clang (-DVIA_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++) this is a libFuzzer target:
//   build/sam_reply_fuzz tests/fuzz/sam_corpus
// With another compiler it is a standalone driver: it runs every corpus file given on the
// command line, then N deterministic mutations of them (flip, insert, delete, splice):
//   build/sam_reply_fuzz [-n N] [-s SEED] tests/fuzz/sam_corpus/*
// Any crash, sanitizer report or broken invariant (abort) is a finding.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "overlays/sam.h"

namespace sam = via::overlays::sam;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto r = sam::ParseReply(in);
  if (r.ok()) {
    if (r->topic.empty() || r->subtopic.empty()) std::abort();
    for (const auto& [k, v] : r->pairs) {
      if (k.empty() || k.find('=') != std::string::npos) std::abort();
    }
    (void)sam::Expect(*r, in, "STREAM", "STATUS", "fuzz");
  } else if (r.status().code() != EPROTO) {
    std::abort();
  }
  (void)sam::ParsePeerLine(in);
  // Fed to a handshake in chunks of 7 bytes, the way ConnectOp would (never past a '\n').
  auto h = sam::NewConnectHandshake("fuzz", "x.i2p");
  if (!h.ok()) std::abort();
  size_t i = 0;
  while (i < size) {
    std::string out((*h)->Output());
    (*h)->Consumed(out.size());
    size_t want = (*h)->WantRead();
    if (want == 0) break;
    size_t n = std::min<size_t>({7, size - i, want});
    const void* nl = std::memchr(data + i, '\n', n);
    if (nl != nullptr) n = size_t(static_cast<const uint8_t*>(nl) - (data + i)) + 1;
    via::Status st = (*h)->Feed(data + i, n);
    i += n;
    if (!st.ok()) {
      if (st.code() == 0 || (*h)->Done()) std::abort();
      break;
    }
  }
  return 0;
}

#ifndef VIA_LIBFUZZER
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
      std::ifstream f(argv[a], std::ios::binary);
      std::stringstream ss;
      ss << f.rdbuf();
      corpus.push_back(ss.str());
    }
  }
  if (corpus.empty()) corpus.push_back("HELLO REPLY RESULT=OK VERSION=3.1");
  for (const std::string& c : corpus) {
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(c.data()), c.size());
  }
  std::mt19937 rng(seed);
  const char kInteresting[] = " =\"\\\nAZaz09._-~\x7f\x80\xff";
  for (long it = 0; it < iterations; ++it) {
    std::string s = corpus[rng() % corpus.size()];
    int edits = 1 + int(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
      switch (rng() % 5) {
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
        default:
          if (pos < s.size()) s.insert(pos, std::string(rng() % 3 == 0 ? 9000 : 3, s[pos]));
      }
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  }
  std::printf("sam_reply_fuzz: %zu corpus inputs and %ld mutations (seed %u): no finding\n",
              corpus.size(), iterations, seed);
  return 0;
}
#endif
