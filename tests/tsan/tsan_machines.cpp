// The thread-safety contract under ThreadSanitizer (scripts/test.sh builds build-tsan/ with
// -fsanitize=thread): different Machines on different threads run concurrently without a data
// race. Each thread builds traced Machines (the shared "cowpte" spdlog logger), and drives its
// own Machine, untimed and timed, through mmap, stores, loads, COW PTE forks under both
// policies, pins and exits. Uses only the public facade. Exits non-zero on a wrong value; TSan
// reports a race and fails the run (halt_on_error=1).
#include <cowpte/cowpte.hpp>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

namespace {

using namespace cowpte;
constexpr std::uint64_t kPage = 4096;

int work(unsigned id) {
  int errors = 0;
  for (int i = 0; i < 20; ++i) Machine traced({.memory_bytes = 1 << 20, .trace = true});
  for (int round = 0; round < 4; ++round) {
    MachineConfig cfg{.memory_bytes = 16 << 20, .cpus = 2};
    cfg.timing.enabled = round % 2 == 1;
    cfg.cow_pte_policy = round / 2 ? CowPtePolicy::on_demand_fork : CowPtePolicy::seed;
    Machine m(cfg);
    Process& p = m.spawn();
    const vaddr_t a =
        *p.mmap(0, 512 * kPage, Prot::read | Prot::write, MapFlags::private_ | MapFlags::anonymous);
    for (std::uint64_t i = 0; i < 512; ++i) (void)p.store(a + i * kPage, id * 1000 + i);
    (void)p.set_cow_pte();
    std::vector<Process*> kids;
    for (int k = 0; k < 8; ++k) {
      auto c = p.fork();
      if (!c) return 1;
      kids.push_back(*c);
      (void)(*c)->store(a + k * kPage, 7);
      (void)(*c)->pin(a + 100 * kPage, kPage, PinFlags::write);
    }
    for (std::uint64_t i = 0; i < 512; ++i) errors += *p.load(a + i * kPage) != id * 1000 + i;
    for (int k = 0; k < 8; ++k) errors += *kids[k]->load(a + k * kPage) != 7;
    for (Process* c : kids) c->exit();
    m.check_invariants();
  }
  return errors;
}

}  // namespace

int main() {
  int e1 = 0, e2 = 0;
  std::thread t1([&] { e1 = work(1); }), t2([&] { e2 = work(2); });
  t1.join();
  t2.join();
  if (e1 || e2) {
    std::fprintf(stderr, "tsan_machines: %d and %d wrong values\n", e1, e2);
    return 1;
  }
  std::puts("tsan_machines: two Machines on two threads, no race");
  return 0;
}
