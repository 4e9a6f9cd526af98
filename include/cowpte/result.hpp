// Result<T>: the facade's error-or-value type, with the members of std::expected that the
// facade promises (has_value, operator bool, value, operator*, error). A small type of our own
// so that users need neither C++23 nor a particular standard library.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "cowpte/types.hpp"

namespace cowpte {

// Thrown by Result::value() on an error, like std::bad_expected_access.
class BadResultAccess : public std::logic_error {
 public:
  explicit BadResultAccess(Errno e)
      : std::logic_error("cowpte::Result holds " + std::string(to_string(e))), err_(e) {}
  Errno error() const noexcept { return err_; }

 private:
  Errno err_;
};

// The error half of a Result, so that `return unexpected(Errno::inval);` reads like std::expected.
struct Unexpected {
  Errno err;
};
constexpr Unexpected unexpected(Errno e) noexcept { return Unexpected{e}; }

namespace detail {
// Where a Result keeps its value or error. A trivially copyable value (every Result the facade
// returns: an address, a word, a pointer) sits beside the error code and a flag: such a Result
// is itself trivially copyable and comes back in two registers instead of through a variant on
// the stack, which matters on the path of every simulated load. Other types use a std::variant.
template <class T, bool Trivial = std::is_trivially_copyable_v<T>>
class ResultStorage {
 public:
  explicit ResultStorage(T v) : v_(std::in_place_index<0>, std::move(v)) {}
  explicit ResultStorage(Errno e) : v_(std::in_place_index<1>, e) {}
  bool has_value() const noexcept { return v_.index() == 0; }
  const T& get() const noexcept { return *std::get_if<0>(&v_); }
  T& get() noexcept { return *std::get_if<0>(&v_); }
  Errno error() const noexcept { return has_value() ? Errno{0} : *std::get_if<1>(&v_); }

 private:
  std::variant<T, Errno> v_;
};

template <class T>
class ResultStorage<T, true> {
 public:
  explicit ResultStorage(T v) : v_(v) {}
  explicit ResultStorage(Errno e) : none_(), err_(e), ok_(0) {}
  bool has_value() const noexcept { return ok_ != 0; }
  const T& get() const noexcept { return v_; }
  T& get() noexcept { return v_; }
  Errno error() const noexcept { return err_; }

 private:
  union {
    T v_;
    char none_;  // an error: no value
  };
  Errno err_{0};
  // Apart from err_: a Result built from Errno{0} is still an error. 32 bits, not a bool, so
  // that err_ and ok_ fill the second register whole (no merging into padding bytes).
  std::uint32_t ok_ = 1;
};
}  // namespace detail

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T v) : s_(std::move(v)) {}    // NOLINT: implicit like expected
  Result(Unexpected u) : s_(u.err) {}  // NOLINT
  Result(Errno e) : s_(e) {}           // NOLINT

  bool has_value() const noexcept { return s_.has_value(); }
  explicit operator bool() const noexcept { return has_value(); }
  const T& value() const& {
    check();
    return s_.get();
  }
  T& value() & {
    check();
    return s_.get();
  }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }
  Errno error() const noexcept { return s_.error(); }

 private:
  void check() const {
    if (!has_value()) [[unlikely]]
      throw BadResultAccess(s_.error());
  }
  detail::ResultStorage<T> s_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Unexpected u) : err_(u.err) {}  // NOLINT
  Result(Errno e) : err_(e) {}           // NOLINT

  bool has_value() const noexcept { return err_ == Errno{0}; }
  explicit operator bool() const noexcept { return has_value(); }
  void value() const {
    if (!has_value()) throw BadResultAccess(err_);
  }
  void operator*() const { value(); }
  Errno error() const noexcept { return err_; }

 private:
  Errno err_{0};
};

}  // namespace cowpte
