// libFuzzer target: the JSON configuration loader (config_io.hpp). Any input either loads or
// is refused with std::invalid_argument (no other exception, no crash, no UB); what loads is in
// range (check_machine_config accepts it), round-trips through to_json unchanged, and builds a
// Machine that forks (with its memory and CPUs capped, so that one run stays small).
#include <cowpte/cowpte.hpp>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace {

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_config: %s\n", what.c_str());
  __builtin_trap();
}

std::uint64_t entries(const cowpte::TimingConfig& t) {
  std::uint64_t n = 0;
  for (const cowpte::ArrayGeometry* g : {&t.dtlb_4k, &t.dtlb_2m, &t.dtlb_1g, &t.stlb, &t.pwc_pml4e,
                                         &t.pwc_pdpte, &t.pwc_pde, &t.l1d, &t.l2, &t.llc})
    n += std::uint64_t(g->sets) * g->ways;
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  cowpte::MachineConfig cfg;
  try {
    cfg = cowpte::machine_config_from_json(text);
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).rfind("cowpte config: ", 0) != 0) fail("unprefixed error");
    return 0;
  }
  try {
    cowpte::check_machine_config(cfg);
  } catch (const std::exception& e) {
    fail(std::string("loaded but out of range: ") + e.what());
  }
  const std::string json = cowpte::to_json(cfg);
  cowpte::MachineConfig back;
  try {
    back = cowpte::machine_config_from_json(json);
  } catch (const std::exception& e) {
    fail(std::string("to_json output does not load: ") + e.what() + "\n" + json);
  }
  if (cowpte::to_json(back) != json) fail("round trip changed the configuration:\n" + json);

  // Build it, small: a Machine of the full 2^46 bytes or 64 CPUs of large caches is allowed but
  // costs the host more than a fuzzer's run may.
  if (cfg.memory_bytes > (16ull << 20)) cfg.memory_bytes = 16ull << 20;
  if (cfg.cpus > 4) cfg.cpus = 4;
  if (entries(cfg.timing) > (1u << 18)) cfg.timing.enabled = false;
  cowpte::Machine m(cfg);
  cowpte::Process& p = m.spawn();
  auto a = p.mmap(0, 8 << 12, cowpte::Prot::read | cowpte::Prot::write,
                  cowpte::MapFlags::private_ | cowpte::MapFlags::anonymous);
  if (!a || !p.store(*a, 1)) fail("mmap or store failed");
  auto c = p.fork();
  if (!c || *(*c)->load(*a) != 1) fail("fork failed");
  m.check_invariants();
  return 0;
}
