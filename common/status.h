// Status and Result<T>: errors as values (leveldb style). No exceptions cross a module boundary.
//
// A Status carries an errno-style code (0 = OK) and a human-readable message. The code is what a
// hooked libc call finally reports to the program, so pick the errno that fits the cause.
#pragma once

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

namespace via {

class Status {
 public:
  Status() = default;  // OK
  static Status Ok() { return Status(); }
  // An error with errno `code` (non-zero) and `message`.
  static Status Error(int code, std::string message) { return Status(code, std::move(message)); }
  // Converts the current errno (or `err`) of a failed system call into a Status:
  // "<context>: <strerror>".
  static Status FromErrno(const std::string& context, int err = errno) {
    return Status(err == 0 ? EIO : err, context + ": " + std::strerror(err));
  }
  // A configuration or input error (EINVAL).
  static Status Invalid(std::string message) { return Status(EINVAL, std::move(message)); }

  bool ok() const { return code_ == 0; }
  int code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const { return ok() ? std::string("OK") : message_; }

  // Returns a copy whose message is "<prefix>: <message>".
  Status WithContext(const std::string& prefix) const {
    return ok() ? *this : Status(code_, prefix + ": " + message_);
  }

 private:
  Status(int code, std::string message) : code_(code), message_(std::move(message)) {}
  int code_ = 0;
  std::string message_;
};

// Either a value or an error Status.
template <typename T>
class Result {
 public:
  Result(T value) : value_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {}  // NOLINT: must be an error
  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace via
