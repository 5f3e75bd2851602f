// What the broker's HELLO reply said about running SOCKS5 in the program (kFlagShimSocks5):
// filled by the broker link (broker_link.cc), read by the connect decision (hook_connect.cc) and
// the shim's own SOCKS5 CONNECT (socks5_connect.cc). The struct is common/socks5_plan.h's
// (`via run --strict` reads the same reply).
#pragma once

#include "common/socks5_plan.h"
