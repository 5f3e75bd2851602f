// A small JSON writer for the --json outputs (docs/json.md: `via check`, the broker's status):
// objects and arrays built in order, strings escaped (control characters as \u00XX; bytes that
// are not UTF-8 as U+FFFD, so that the output always parses).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace via {

class Json {
 public:
  Json& BeginObject() { return Open('{'); }
  Json& EndObject() { return Close('}'); }
  Json& BeginArray() { return Open('['); }
  Json& EndArray() { return Close(']'); }
  // A member's name inside an object; the value follows.
  Json& Key(std::string_view k) {
    Separate();
    Quote(k);
    out_ += ':';
    after_key_ = true;
    return *this;
  }
  Json& String(std::string_view s) {
    Separate();
    Quote(s);
    return *this;
  }
  // `s`, or null when it is empty.
  Json& StringOrNull(std::string_view s) { return s.empty() ? Null() : String(s); }
  Json& Int(int64_t v) {
    Separate();
    out_ += std::to_string(v);
    return *this;
  }
  Json& Bool(bool v) {
    Separate();
    out_ += v ? "true" : "false";
    return *this;
  }
  Json& Null() {
    Separate();
    out_ += "null";
    return *this;
  }
  Json& Strings(const std::vector<std::string>& v) {
    BeginArray();
    for (const std::string& s : v) String(s);
    return EndArray();
  }
  const std::string& str() const { return out_; }

 private:
  Json& Open(char c) {
    Separate();
    out_ += c;
    first_.push_back(true);
    return *this;
  }
  Json& Close(char c) {
    out_ += c;
    first_.pop_back();
    return *this;
  }
  // A comma before every value of an object or array but the first (a member's value follows its
  // key directly).
  void Separate() {
    if (after_key_) {
      after_key_ = false;
      return;
    }
    if (first_.empty()) return;
    if (!first_.back()) out_ += ',';
    first_.back() = false;
  }
  void Quote(std::string_view s);

  std::string out_;
  std::vector<bool> first_;
  bool after_key_ = false;
};

}  // namespace via
