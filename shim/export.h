// How the shim exports a hook: libvia.so is built with hidden visibility, so only what is marked
// here is in its dynamic symbol table (and replaces libc's function of that name).
#pragma once

#define VIA_EXPORT extern "C" __attribute__((visibility("default")))
