// libFuzzer target: the trace reader and replay (include/cowpte/trace.hpp). Any input is read
// from memory to its end or refused with TraceError (no other exception, no crash, no UB, no
// unbounded allocation); what reads is replayed on a small functional machine, where a call
// the model refuses is counted and a pid used before it exists is a TraceError; the machine's
// invariants hold afterwards. Inputs are traces: the seed corpus (corpus/trace) holds real ones.
#include <cowpte/cowpte.hpp>
#include <cstdint>
#include <cstdio>
#include <string>

namespace {

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_trace: %s\n", what.c_str());
  __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    cowpte::TraceReader r(data, size, "fuzz");
    cowpte::TraceEvent e;
    while (r.next(e)) {
    }
  } catch (const cowpte::TraceError&) {
    return 0;  // refused: the replay below would refuse it the same way
  } catch (const std::exception& e) {
    fail(std::string("reading threw ") + e.what());
  }
  cowpte::Machine m(cowpte::MachineConfig{.memory_bytes = 16ull << 20});
  try {
    cowpte::TraceReader r(data, size, "fuzz");
    cowpte::replay_trace(m, r);
  } catch (const cowpte::TraceError&) {
    // an unknown or doubled pid: refused, the machine stays consistent
  } catch (const std::exception& e) {
    fail(std::string("replay threw ") + e.what());
  }
  try {
    m.check_invariants();
  } catch (const std::exception& e) {
    fail(std::string("invariants after replay: ") + e.what());
  }
  return 0;
}
