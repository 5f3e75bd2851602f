#include "common/random.h"
#include "broker/session_table.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>

namespace via::broker {

Result<std::string> NewSessionToken() {
  uint8_t b[16];
  if (Status s = FillRandom(b, sizeof b); !s.ok()) return s;
  char hex[33];
  for (size_t i = 0; i < sizeof b; ++i) std::snprintf(hex + 2 * i, 3, "%02x", b[i]);
  return std::string(hex, 32);
}

Result<const SessionTable::Session*> SessionTable::Open(const std::string& network, uint64_t owner,
                                                        int64_t now_ms) {
  auto token = NewSessionToken();
  if (!token.ok()) return token.status();
  Session s;
  s.token = *token;
  s.network = network;
  s.owner = owner;
  s.opened_ms = now_ms;
  auto [it, inserted] = sessions_.emplace(s.token, std::move(s));
  (void)inserted;  // 128 random bits do not collide
  return &it->second;
}

const SessionTable::Session* SessionTable::Find(std::string_view token) const {
  auto it = sessions_.find(token);
  return it == sessions_.end() ? nullptr : &it->second;
}

SessionTable::Session* SessionTable::FindMutable(std::string_view token) {
  auto it = sessions_.find(token);
  return it == sessions_.end() ? nullptr : &it->second;
}

const SessionTable::Session* SessionTable::FindByRoot(pid_t root, uint64_t start) const {
  const Session* best = nullptr;
  for (const auto& [token, s] : sessions_) {
    if (s.root != root || s.root_start != start || root == 0) continue;
    if (best == nullptr || s.opened_ms >= best->opened_ms) best = &s;
  }
  return best;
}

void SessionTable::Detach(Session* s, std::vector<std::pair<pid_t, uint64_t>> heirs) {
  s->heirs = std::move(heirs);
  s->owner = 0;
}

size_t SessionTable::PruneDetached(const std::function<bool(pid_t, uint64_t)>& alive) {
  size_t ended = 0;
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    bool keep = !it->second.detached();
    for (const auto& [pid, start] : it->second.heirs) keep = keep || alive(pid, start);
    if (keep) {
      ++it;
    } else {
      it = sessions_.erase(it);
      ++ended;
    }
  }
  return ended;
}

size_t SessionTable::detached_count() const {
  size_t n = 0;
  for (const auto& [token, s] : sessions_) n += s.detached();
  return n;
}

std::vector<SessionTable::Session> SessionTable::EndOwnedBy(uint64_t owner) {
  std::vector<Session> ended;
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (it->second.owner == owner) {
      ended.push_back(std::move(it->second));
      it = sessions_.erase(it);
    } else {
      ++it;
    }
  }
  return ended;
}

bool SessionTable::RecordGroups(pid_t pid, uint64_t start, const std::vector<std::string>& groups,
                                const std::vector<std::string>& reasons,
                                const std::function<bool(pid_t, uint64_t)>& alive) {
  if (pid <= 0 || groups.empty()) return false;
  if (recorded_.size() >= prune_recorded_at_ && alive) {
    std::erase_if(recorded_, [&](const auto& e) { return !alive(e.first.first, e.first.second); });
    prune_recorded_at_ = std::max<size_t>(1024, 2 * recorded_.size());
  }
  auto& [have, why] = recorded_[{pid, start}];
  bool added = false;
  for (const std::string& g : groups) {
    if (std::find(have.begin(), have.end(), g) == have.end()) {
      have.push_back(g);
      added = true;
    }
  }
  std::sort(have.begin(), have.end());
  for (const std::string& r : reasons) {
    if (why.size() < 64 && std::find(why.begin(), why.end(), r) == why.end()) why.push_back(r);
  }
  return added;
}

const std::pair<std::vector<std::string>, std::vector<std::string>>* SessionTable::FindGroups(
    pid_t pid, uint64_t start) const {
  auto it = recorded_.find({pid, start});
  return it == recorded_.end() ? nullptr : &it->second;
}

}  // namespace via::broker
