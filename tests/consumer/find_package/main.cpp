// A consumer of cowpte, built against the installed package (find_package) and from a checkout
// (add_subdirectory, ../add_subdirectory/CMakeLists.txt).
// Exits non-zero when the simulated machine returns a wrong value. scripts/test.sh builds it.
#include <cowpte/cowpte.hpp>

#include <cstdint>
#include <cstdio>
#include <exception>

namespace {

int fail(const char* what, std::uint64_t got, std::uint64_t want) {
  std::fprintf(stderr, "consumer: %s: got %#llx, want %#llx\n", what,
               static_cast<unsigned long long>(got), static_cast<unsigned long long>(want));
  return 1;
}

}  // namespace

int main() try {
  using namespace cowpte;
  constexpr std::uint64_t kParent = 0x1111'2222'3333'4444;
  constexpr std::uint64_t kChild = 0x5555'6666'7777'8888;

  Machine m(MachineConfig{.memory_bytes = 64ull << 20});
  Process& p = m.spawn();
  const vaddr_t va =
      p.mmap(0, 4 * 4096, Prot::read | Prot::write, MapFlags::private_ | MapFlags::anonymous)
          .value();
  p.store(va + 8, kParent).value();
  if (std::uint64_t v = p.load(va + 8).value(); v != kParent)
    return fail("parent load", v, kParent);

  Process* c = p.fork().value();
  if (std::uint64_t v = c->load(va + 8).value(); v != kParent)
    return fail("child load", v, kParent);
  c->store(va + 8, kChild).value();  // breaks COW: the parent must keep its own value
  if (std::uint64_t v = c->load(va + 8).value(); v != kChild)
    return fail("child reload", v, kChild);
  if (std::uint64_t v = p.load(va + 8).value(); v != kParent)
    return fail("parent reload", v, kParent);
  m.check_invariants();

  c->exit();
  p.exit();
  m.check_invariants();
  std::puts("consumer: ok");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "consumer: %s\n", e.what());
  return 1;
}
