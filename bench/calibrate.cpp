// cowpte_calibrate: this machine's real fork latency against the simulated one, size by size.
// For each size it really maps, populates (4 KiB pages) and forks a process (median of --runs
// forks), then simulates the same with the timing model and prints both with the error.
//
//   cowpte_calibrate [--sizes 16,64,256,1024,4096] [--runs 5] [--rounds 3]
//                    [--config machine.json] [--json results.json]
#include <algorithm>
#include <cowpte/cowpte.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "real_fork.hpp"

using namespace cowpte;

namespace {

struct Row {
  std::uint64_t mib;
  double real_ns, real_best_ns, sim_ns, sim_cycles;
};

double simulated_fork_ns(const MachineConfig& base, std::uint64_t mib, std::uint64_t own_bytes,
                         double* cycles_out) {
  MachineConfig cfg = base;
  cfg.timing.enabled = true;
  cfg.memory_bytes = ((mib + 256) << 20) + own_bytes;
  Machine m(cfg);
  Process& p = m.spawn();
  const auto populated = MapFlags::private_ | MapFlags::anonymous | MapFlags::populate;
  auto a =
      p.mmap(0x7e0000000000ull, mib << 20, Prot::read | Prot::write, populated | MapFlags::fixed);
  if (!a) throw std::runtime_error("simulated mmap failed");
  if (own_bytes && !p.mmap(0, (own_bytes + 4095) & ~4095ull, Prot::read | Prot::write, populated))
    throw std::runtime_error("simulated mmap failed");
  const std::uint64_t before = p.hw_stats().phase[std::size_t(Phase::fork)].cycles;
  auto c = p.fork();
  if (!c) throw std::runtime_error("simulated fork failed");
  const double cycles = double(p.hw_stats().phase[std::size_t(Phase::fork)].cycles - before);
  *cycles_out = cycles;
  return cycles / cfg.timing.ghz;
}

// Sizes in MiB, 1..65536 each (a real mapping of that size is populated and forked).
std::vector<std::uint64_t> parse_sizes(const std::string& s) {
  std::vector<std::uint64_t> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    out.push_back(cowpte::bench::uint_arg("cowpte_calibrate", "--sizes item", item, 1, 65536));
  if (out.empty() || s.back() == ',')
    out.push_back(cowpte::bench::uint_arg("cowpte_calibrate", "--sizes item", "", 1, 65536));
  return out;
}

constexpr const char* kUsage =
    "usage: %s [--sizes MiB,MiB,...] [--runs N] [--rounds N] [--config machine.json] "
    "[--json out.json]\n"
    "  --sizes   sizes to fork, MiB, 1..65536 each (default 16,64,256,1024,4096)\n"
    "  --runs    real forks per size and round, median taken, 1..1000 (default 5)\n"
    "  --rounds  rounds over the sizes, 1..1000 (default 3)\n"
    "  --config  the simulated machine, JSON (config_io.hpp)\n"
    "  --json    also write the rows as JSON\n";

}  // namespace

int run(int argc, char** argv);

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // a real mmap or fork the host refused, say
    std::fprintf(stderr, "cowpte_calibrate: %s\n", e.what());
    return 1;
  }
}

int run(int argc, char** argv) {
  std::vector<std::uint64_t> sizes{16, 64, 256, 1024, 4096};
  int runs = 5, rounds = 3;
  MachineConfig cfg;
  std::string json_out;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "cowpte_calibrate: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::printf(kUsage, argv[0]);
      return 0;
    } else if (arg == "--sizes") {
      sizes = parse_sizes(next());
    } else if (arg == "--runs") {
      runs = int(cowpte::bench::uint_arg("cowpte_calibrate", arg, next(), 1, 1000));
    } else if (arg == "--rounds") {
      rounds = int(cowpte::bench::uint_arg("cowpte_calibrate", arg, next(), 1, 1000));
    } else if (arg == "--config") {
      const std::string path = next();
      try {
        cfg = load_machine_config(path);
      } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "cowpte_calibrate: bad --config '%s': %s\n", path.c_str(), e.what());
        return 2;
      }
    } else if (arg == "--json") {
      json_out = next();
    } else {
      std::fprintf(stderr, "cowpte_calibrate: unknown argument '%s'\n", arg.c_str());
      std::fprintf(stderr, kUsage, argv[0]);
      return 2;
    }
  }
  std::printf("%8s %9s %13s %12s %13s %9s %10s %11s\n", "MiB", "PTEs", "real fork ms", "best round",
              "simulated ms", "error", "vs best", "sim ns/PTE");
  // Every real fork first, while this process is still small: after a simulation its heap is
  // bigger, and its real fork slower. The real cost per PTE also depends on where the kernel
  // found the frames (recycled ones scatter the struct page accesses), so the sizes are taken
  // in --rounds rounds, ascending and descending in turn, and each size reports the median of
  // its rounds' medians, and its best round: other tenants of a shared machine only ever add
  // time, so the best round is the closest to this kernel's own cost.
  const std::uint64_t own = cowpte::bench::own_rss_bytes();
  std::vector<std::vector<double>> samples(sizes.size());
  for (int r = 0; r < rounds; ++r) {
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      const std::size_t i = r % 2 ? sizes.size() - 1 - k : k;
      cowpte::bench::RealProcessMemory mem(sizes[i] << 20);
      samples[i].push_back(mem.median_fork_ns(runs));
    }
  }
  std::vector<double> real, best;
  for (auto& s : samples) {
    std::sort(s.begin(), s.end());
    real.push_back(s[s.size() / 2]);
    best.push_back(s.front());
  }
  std::printf("(the simulated process also has %.1f MiB populated: this program's own VmRSS)\n",
              double(own) / (1 << 20));
  std::vector<Row> rows;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const std::uint64_t mib = sizes[i];
    const double real_ns = real[i];
    double cycles = 0;
    const double sim_ns = simulated_fork_ns(cfg, mib, own, &cycles);
    const double ptes = double(mib << 8);
    rows.push_back({mib, real_ns, best[i], sim_ns, cycles});
    std::printf("%8llu %9.0f %13.3f %12.3f %13.3f %+8.1f%% %+9.1f%% %11.1f\n",
                (unsigned long long)mib, ptes, real_ns / 1e6, best[i] / 1e6, sim_ns / 1e6,
                100.0 * (sim_ns - real_ns) / real_ns, 100.0 * (sim_ns - best[i]) / best[i],
                sim_ns / ptes);
    std::fflush(stdout);
  }
  if (!json_out.empty()) {
    std::ofstream out(json_out);
    out << "{\n  \"machine\": " << to_json(cfg) << ",\n  \"rows\": [\n";
    for (std::size_t i = 0; i < rows.size(); ++i)
      out << "    {\"mib\": " << rows[i].mib << ", \"real_ns\": " << rows[i].real_ns
          << ", \"real_best_ns\": " << rows[i].real_best_ns << ", \"sim_ns\": " << rows[i].sim_ns
          << ", \"sim_cycles\": " << rows[i].sim_cycles << "}" << (i + 1 < rows.size() ? "," : "")
          << "\n";
    out << "  ]\n}\n";
  }
  return 0;
}
