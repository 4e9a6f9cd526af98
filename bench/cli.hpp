// Command-line helpers shared by the programs of bench/: strict number parsing, so that a bad
// argument is named on stderr and the program exits 2 instead of aborting (std::stoull) or
// silently reading 0 (std::atoi, std::strtoull).
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

namespace cowpte::bench {

// s as a decimal integer in [lo, hi], or nothing.
inline std::optional<std::uint64_t> parse_uint(const std::string& s, std::uint64_t lo,
                                               std::uint64_t hi) {
  if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), nullptr, 10);
  if (errno || v < lo || v > hi) return std::nullopt;
  return v;
}

// The value of option `name`, or exit 2 naming it and the allowed range.
inline std::uint64_t uint_arg(const char* prog, const std::string& name, const std::string& s,
                              std::uint64_t lo, std::uint64_t hi) {
  if (auto v = parse_uint(s, lo, hi)) return *v;
  std::fprintf(stderr, "%s: bad %s '%s': expected an integer in %llu..%llu\n", prog, name.c_str(),
               s.c_str(), static_cast<unsigned long long>(lo), static_cast<unsigned long long>(hi));
  std::exit(2);
}

}  // namespace cowpte::bench
