// The quick-start demo: populate a process, fork it, and print what the fork did to the
// page tables and to struct page, and how long the model took (host time).
#include <chrono>
#include <cowpte/cowpte.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli.hpp"

using namespace cowpte;

int main(int argc, char** argv) {
  // cowpte_demo [MiB]: MiB is 1..65536 (default 256).
  std::uint64_t mib = 256;
  if (argc > 1) {
    const std::string arg = argv[1];
    if (arg == "--help" || arg == "-h") {
      std::printf(
          "usage: %s [MiB]\n"
          "  populate MiB of private anonymous memory (1..65536, default 256), fork, and print\n"
          "  what the fork did to the page tables and struct pages\n",
          argv[0]);
      return 0;
    }
    if (argc > 2) {
      std::fprintf(stderr, "cowpte_demo: unexpected argument '%s'\n", argv[2]);
      return 2;
    }
    mib = cowpte::bench::uint_arg("cowpte_demo", "MiB", arg, 1, 65536);
  }
  const std::uint64_t len = mib << 20;
  Machine m(MachineConfig{.memory_bytes = 2 * len + (64ull << 20)});
  Process& parent = m.spawn();
  auto addr = parent.mmap(0, len, Prot::read | Prot::write,
                          MapFlags::private_ | MapFlags::anonymous | MapFlags::populate);
  if (!addr) return std::printf("mmap failed: %s\n", to_string(addr.error()).data()), 1;
  (void)parent.store(*addr, 0x1234);

  const auto t0 = std::chrono::steady_clock::now();
  auto child = parent.fork();
  const auto t1 = std::chrono::steady_clock::now();
  if (!child) return std::printf("fork failed\n"), 1;
  const double ns = std::chrono::duration<double, std::nano>(t1 - t0).count();
  const std::uint64_t ptes = len >> 12;

  std::printf("cowpte demo: classic fork of a process with %llu MiB populated (4 KiB pages)\n",
              static_cast<unsigned long long>(mib));
  std::printf("  PTEs copied            %llu\n", static_cast<unsigned long long>(ptes));
  std::printf("  host time of fork      %.3f ms (%.2f ns per PTE)\n", ns / 1e6, ns / ptes);
  std::printf("  VmPTE parent / child   %llu kB / %llu kB\n",
              static_cast<unsigned long long>(parent.pgtables_bytes() >> 10),
              static_cast<unsigned long long>((*child)->pgtables_bytes() >> 10));
  std::printf("  RSS anon parent/child  %lld / %lld pages\n",
              static_cast<long long>(parent.rss().anon),
              static_cast<long long>((*child)->rss().anon));
  const PagemapEntry pm = parent.pagemap(*addr);
  const PageInfo pi = m.page_info(pm.pfn);
  std::printf("  first page: pfn %#llx refcount %lld mapcount %lld exclusive %d\n",
              static_cast<unsigned long long>(pm.pfn), static_cast<long long>(pi.refcount),
              static_cast<long long>(pi.mapcount), pi.anon_exclusive);
  const auto w = m.walk(parent, *addr);
  std::printf("  parent PTE %#llx (RW %d), child PTE %#llx\n",
              static_cast<unsigned long long>(w.entry[3]), int(w.entry[3] & 2),
              static_cast<unsigned long long>(m.walk(**child, *addr).entry[3]));
  (void)parent.store(*addr, 0x5678);  // the parent's write copies the page
  std::printf("  after a parent write: parent reads %#llx, child reads %#llx\n",
              static_cast<unsigned long long>(*parent.load(*addr)),
              static_cast<unsigned long long>(*(*child)->load(*addr)));
  m.check_invariants();
  (*child)->exit();
  parent.exit();
  std::printf("  all exited: %llu of %llu frames free\n",
              static_cast<unsigned long long>(m.free_pages()),
              static_cast<unsigned long long>(m.total_pages()));
  return 0;
}
