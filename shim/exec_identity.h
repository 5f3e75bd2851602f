// What the broker may record about a process before it execs (exec_identity.cc).
#pragma once

namespace via::shim {

// Before an exec in place of `file`: lets a broker that asks for it record this process's groups.
// Stack and system calls only (vfork children).
void GreetBrokerBeforeExec(const char* file);
// Works out the path of the marker GreetBrokerBeforeExec looks for, once, before the first fork
// (the fork hook): the children then test it without formatting it again each.
void PrepareExecGreeting();

}  // namespace via::shim
