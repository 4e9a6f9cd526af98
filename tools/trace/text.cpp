// The text form of trace events (text.hpp).
#include "trace/text.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <utility>
#include <vector>

namespace cowpte::tracetool {

namespace {

constexpr std::uint64_t kPage = 4096;

constexpr std::pair<MapFlags, const char*> kFlags[] = {
    {MapFlags::shared, "shared"},
    {MapFlags::private_, "private"},
    {MapFlags::fixed, "fixed"},
    {MapFlags::anonymous, "anonymous"},
    {MapFlags::noreserve, "noreserve"},
    {MapFlags::populate, "populate"},
    {MapFlags::fixed_noreplace, "fixed_noreplace"}};
constexpr std::pair<Advice, const char*> kAdvice[] = {{Advice::dontneed, "dontneed"},
                                                      {Advice::free_, "free"},
                                                      {Advice::remove, "remove"},
                                                      {Advice::dontfork, "dontfork"},
                                                      {Advice::dofork, "dofork"},
                                                      {Advice::wipeonfork, "wipeonfork"},
                                                      {Advice::keeponfork, "keeponfork"},
                                                      {Advice::cold, "cold"},
                                                      {Advice::pageout, "pageout"},
                                                      {Advice::populate_read, "populate_read"},
                                                      {Advice::populate_write, "populate_write"},
                                                      {Advice::hugepage, "hugepage"},
                                                      {Advice::nohugepage, "nohugepage"},
                                                      {Advice::collapse, "collapse"}};
constexpr std::size_t kKindCount = std::size_t(TraceKind::touch) + 1;  // end .. touch

std::string prot_text(Prot p) {
  std::string s = "---";
  if (any(p & Prot::read)) s[0] = 'r';
  if (any(p & Prot::write)) s[1] = 'w';
  if (any(p & Prot::exec)) s[2] = 'x';
  return s;
}

std::string flags_text(MapFlags f) {
  std::string s;
  auto rest = std::uint32_t(f);
  for (auto [flag, n] : kFlags)
    if (any(f & flag)) {
      if (!s.empty()) s += '|';  // piecewise: GCC 12's -Wrestrict misfires on `"" + string`
      s += n;
      rest &= ~std::uint32_t(flag);
    }
  if (rest) {
    if (!s.empty()) s += '|';
    s += fmt::format("{:#x}", rest);
  }
  return s.empty() ? "0" : s;
}

std::string advice_text(Advice a) {
  for (auto [adv, n] : kAdvice)
    if (adv == a) return n;
  return std::to_string(int(a));
}

[[noreturn]] void bad(const std::string& line, const std::string& what) {
  throw std::invalid_argument("'" + line + "': " + what);
}

std::uint64_t number(const std::string& line, const std::string& tok) {
  if (tok.empty() || tok[0] == '-' || tok[0] == '+') bad(line, "'" + tok + "' is not a number");
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(tok.c_str(), &end, 0);
  if (errno || *end) bad(line, "'" + tok + "' is not a number");
  return v;
}

Prot parse_prot(const std::string& line, const std::string& t) {
  if (t.size() != 3 || (t[0] != 'r' && t[0] != '-') || (t[1] != 'w' && t[1] != '-') ||
      (t[2] != 'x' && t[2] != '-'))
    bad(line, "protection '" + t + "' is not like rw-");
  Prot p = Prot::none;
  if (t[0] == 'r') p |= Prot::read;
  if (t[1] == 'w') p |= Prot::write;
  if (t[2] == 'x') p |= Prot::exec;
  return p;
}

MapFlags parse_flags(const std::string& line, const std::string& t) {
  std::uint32_t f = 0;
  std::stringstream in(t);
  for (std::string part; std::getline(in, part, '|');) {
    bool found = false;
    for (auto [flag, n] : kFlags)
      if (part == n) f |= std::uint32_t(flag), found = true;
    if (!found) f |= std::uint32_t(number(line, part));
  }
  return MapFlags(f);
}

Advice parse_advice(const std::string& line, const std::string& t) {
  for (auto [adv, n] : kAdvice)
    if (t == n) return adv;
  return Advice(int(number(line, t)));
}

}  // namespace

std::string to_text(const TraceEvent& e) {
  const std::string_view k = to_string(e.kind);
  switch (e.kind) {
    case TraceKind::end:
      return "end";
    case TraceKind::step:
      return fmt::format("step {}", e.time_ns);
    case TraceKind::spawn:
    case TraceKind::exit:
      return fmt::format("{} {}", k, e.pid);
    case TraceKind::fork:
    case TraceKind::clone:
      return fmt::format("{} {} {}", k, e.pid, e.child);
    case TraceKind::mmap:
      return fmt::format("mmap {} {:#x} {} {} {}", e.pid, e.addr, e.length, prot_text(e.prot),
                         flags_text(e.flags));
    case TraceKind::munmap:
      return fmt::format("munmap {} {:#x} {}", e.pid, e.addr, e.length);
    case TraceKind::mprotect:
      return fmt::format("mprotect {} {:#x} {} {}", e.pid, e.addr, e.length, prot_text(e.prot));
    case TraceKind::madvise:
      return fmt::format("madvise {} {:#x} {} {}", e.pid, e.addr, e.length, advice_text(e.advice));
    case TraceKind::load:
      return fmt::format("load {} {:#x}", e.pid, e.addr);
    case TraceKind::store:
      return fmt::format("store {} {:#x} {}", e.pid, e.addr, e.value);
    case TraceKind::touch: {
      std::string s = fmt::format("touch {} {}", e.pid, e.write ? 'w' : 'r');
      for (std::size_t i = 0; i < e.pages.size();) {  // runs of consecutive pages as +N
        std::size_t j = i + 1;
        while (j < e.pages.size() && e.pages[j] == e.pages[j - 1] + kPage) ++j;
        s += j - i > 1 ? fmt::format(" {:#x}+{}", e.pages[i], j - i)
                       : fmt::format(" {:#x}", e.pages[i]);
        i = j;
      }
      return s;
    }
  }
  return "?";
}

TraceEvent from_text(const std::string& line) {
  std::stringstream in(line);
  std::vector<std::string> t;
  for (std::string w; in >> w;) t.push_back(w);
  if (t.empty()) bad(line, "an empty line");
  TraceEvent e;
  std::size_t kind = 0;
  while (kind < kKindCount && t[0] != to_string(TraceKind(kind))) ++kind;
  if (kind == 0 || kind == kKindCount) bad(line, "unknown event '" + t[0] + "'");
  e.kind = TraceKind(kind);
  auto want = [&](std::size_t n) {
    if (t.size() != n)
      bad(line, fmt::format("{} takes {} fields, not {}", t[0], n - 1, t.size() - 1));
  };
  auto pid = [&](const std::string& s) {
    const std::uint64_t v = number(line, s);
    if (v > 0xffffffffu) bad(line, "a pid beyond 32 bits");
    return std::uint32_t(v);
  };
  switch (e.kind) {
    case TraceKind::step:
      want(2), e.time_ns = number(line, t[1]);
      break;
    case TraceKind::spawn:
    case TraceKind::exit:
      want(2), e.pid = pid(t[1]);
      break;
    case TraceKind::fork:
    case TraceKind::clone:
      want(3), e.pid = pid(t[1]), e.child = pid(t[2]);
      break;
    case TraceKind::mmap:
    case TraceKind::munmap:
    case TraceKind::mprotect:
    case TraceKind::madvise:
      want(e.kind == TraceKind::mmap ? 6 : e.kind == TraceKind::munmap ? 4 : 5);
      e.pid = pid(t[1]);
      e.addr = number(line, t[2]);
      e.length = number(line, t[3]);
      if (e.kind == TraceKind::mmap || e.kind == TraceKind::mprotect)
        e.prot = parse_prot(line, t[4]);
      if (e.kind == TraceKind::mmap) e.flags = parse_flags(line, t[5]);
      if (e.kind == TraceKind::madvise) e.advice = parse_advice(line, t[4]);
      break;
    case TraceKind::load:
    case TraceKind::store:
      want(e.kind == TraceKind::load ? 3 : 4);
      e.pid = pid(t[1]);
      e.addr = number(line, t[2]);
      if (e.kind == TraceKind::store) e.value = number(line, t[3]);
      break;
    case TraceKind::touch:
      if (t.size() < 3 || (t[2] != "r" && t[2] != "w")) bad(line, "touch PID r|w PAGE...");
      e.pid = pid(t[1]);
      e.write = t[2] == "w";
      for (std::size_t i = 3; i < t.size(); ++i) {
        const auto plus = t[i].find('+');
        const vaddr_t a = number(line, t[i].substr(0, plus));
        const std::uint64_t n = plus == std::string::npos ? 1 : number(line, t[i].substr(plus + 1));
        if (n == 0 || n > (1ull << 36)) bad(line, "a run of '" + t[i] + "' pages");
        for (std::uint64_t k = 0; k < n; ++k) e.pages.push_back(a + k * kPage);
      }
      break;
    case TraceKind::end:
      break;
  }
  return e;
}

}  // namespace cowpte::tracetool
