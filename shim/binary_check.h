// The exec guard's check of a binary: would exec of this file run a program without the shim
// (or whose traffic the shim would not see)? Stack only: it runs in vfork children too.
#pragma once

#include <cstddef>

namespace via::shim {

// Why exec of `path` would run without the shim, or nullptr. `interp` names a script's
// interpreter when that is the reason.
const char* UnroutedReason(const char* path, int depth, char* interp, size_t interp_cap);

}  // namespace via::shim
