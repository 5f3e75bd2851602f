// Random edits of a byte string for the unit tests' mutation campaigns (hostile proxy replies,
// programs' DNS queries): deterministic for a given generator state.
#pragma once

#include <random>
#include <string>

namespace via::test {

// Applies `edits` edits to `s`, each one of: replace a byte, cut the string at a point, insert
// a byte, append up to 63 bytes of its own tail. New bytes come from `byte()`, so that a test
// can favour the values its parser branches on.
template <typename ByteFn>
void EditBytes(std::string& s, std::mt19937& rng, int edits, ByteFn byte) {
  for (int e = 0; e < edits; ++e) {
    size_t pos = rng() % (s.size() + 1);
    switch (rng() % 4) {
      case 0:
        if (pos < s.size()) s[pos] = byte();
        break;
      case 1:
        s.resize(pos);
        break;
      case 2:
        s.insert(pos, 1, byte());
        break;
      default:
        s += s.substr(pos, rng() % 64);
    }
  }
}

}  // namespace via::test
