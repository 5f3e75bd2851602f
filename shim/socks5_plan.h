// What the broker's HELLO reply said about running SOCKS5 in the program (kFlagShimSocks5):
// filled by the broker link (broker_link.cc), read by the connect decision (hook_connect.cc) and
// the shim's own SOCKS5 CONNECT (socks5_connect.cc).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/wire.h"

namespace via::shim {

struct Socks5Plan {
  char overlay[256];  // the overlay's id, for messages
  wire::Addr proxies[4];
  int nproxies;
  char username[256], password[256];
  size_t username_len, password_len;
  bool isolate;  // a fresh random credential per connect
  uint32_t timeout_ms;
  wire::Addr fake[2];  // the fake-address ranges, the port field their prefix length
  int nfake;
  uint32_t broker;  // the broker's pid (whose fake addresses and name cache entries)
};

}  // namespace via::shim
