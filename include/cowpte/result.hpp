// Result<T>: the facade's error-or-value type, with the members of std::expected that the
// facade promises (has_value, operator bool, value, operator*, error). A small type of our own
// so that users need neither C++23 nor a particular standard library.
#pragma once

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

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T v) : v_(std::in_place_index<0>, std::move(v)) {}    // NOLINT: implicit like expected
  Result(Unexpected u) : v_(std::in_place_index<1>, u.err) {}  // NOLINT
  Result(Errno e) : v_(std::in_place_index<1>, e) {}           // NOLINT

  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }
  const T& value() const& {
    check();
    return std::get<0>(v_);
  }
  T& value() & {
    check();
    return std::get<0>(v_);
  }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }
  Errno error() const noexcept { return has_value() ? Errno{0} : std::get<1>(v_); }

 private:
  void check() const {
    if (!has_value()) throw BadResultAccess(std::get<1>(v_));
  }
  std::variant<T, Errno> v_;
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
