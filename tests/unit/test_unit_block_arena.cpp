// Unit tests of the host memory behind frame contents (BlockArena) and of the mmu_gather batch:
// blocks fresh from the host are zero and need no memset, freed blocks are reused, empty chunks
// go back to the host (checked with mincore), and a zap of more pages than one batch holds
// flushes and frees as it goes, with the same result.

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cowpte/cowpte.hpp>
#include <cowpte/model/block_arena.hpp>
#include <cowpte/model/mmu_gather.hpp>
#include <cstdint>
#include <cstring>
#include <new>
#include <set>
#include <string>
#include <vector>

#include "facade/access.hpp"
#include "mm/kernel.hpp"

namespace cowpte {
namespace {

constexpr std::size_t kPerChunk = BlockArena::kBlocksPerChunk;

// Host pages of [p, p + bytes) resident now.
std::size_t resident_pages(const void* p, std::size_t bytes) {
  const auto page = std::size_t(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((bytes + page - 1) / page);
  if (::mincore(const_cast<void*>(p), bytes, vec.data()) != 0) return ~std::size_t(0);
  std::size_t n = 0;
  for (unsigned char v : vec) n += v & 1;
  return n;
}

TEST(UnitBlockArena, FreshBlocksAreZeroDistinctAndAligned) {
  BlockArena a(2 * kPerChunk);
  std::set<void*> seen;
  for (std::size_t i = 0; i < 2 * kPerChunk; ++i) {
    bool zeroed = false;
    void* b = a.allocate(&zeroed);
    ASSERT_TRUE(zeroed) << i;
    ASSERT_EQ(reinterpret_cast<std::uintptr_t>(b) % BlockArena::kBlock, 0u);
    const auto* w = static_cast<const std::uint64_t*>(b);
    ASSERT_EQ(w[0] | w[511], 0u) << i;
    ASSERT_TRUE(seen.insert(b).second) << "block handed out twice";
    std::memset(b, 0xab, BlockArena::kBlock);
  }
  EXPECT_EQ(a.resident_chunks(), 2u);
  bool zeroed = true;
  EXPECT_THROW(a.allocate(&zeroed), std::bad_alloc) << "the reservation is used up";
}

TEST(UnitBlockArena, FreedBlockIsReusedAndNotReportedZero) {
  BlockArena a(kPerChunk);
  bool zeroed = false;
  void* b = a.allocate(&zeroed);
  std::memset(b, 0xcd, BlockArena::kBlock);
  void* c = a.allocate(&zeroed);
  a.free(b);
  EXPECT_EQ(a.allocate(&zeroed), b);
  EXPECT_FALSE(zeroed) << "a reused block holds what it held: PhysMem zeroes it";
  a.free(c);
  a.free(b);
  EXPECT_EQ(a.resident_chunks(), 1u) << "the only empty chunk is kept for reuse";
  EXPECT_EQ(a.released_chunks(), 0u);
}

TEST(UnitBlockArena, EmptyChunksGoBackToTheHostBeyondTheKeptOnes) {
  constexpr std::size_t kChunks = BlockArena::kKeepEmpty + 4;
  BlockArena a(kChunks * kPerChunk);
  std::vector<void*> blocks;
  bool zeroed = false;
  for (std::size_t i = 0; i < kChunks * kPerChunk; ++i) {
    blocks.push_back(a.allocate(&zeroed));
    std::memset(blocks.back(), 0x5a, BlockArena::kBlock);
  }
  EXPECT_EQ(a.resident_chunks(), kChunks);
  std::vector<void*> chunk_starts;
  for (std::size_t i = 0; i < kChunks; ++i) chunk_starts.push_back(blocks[i * kPerChunk]);
  for (void* b : blocks) a.free(b);
  EXPECT_EQ(a.resident_chunks(), BlockArena::kKeepEmpty);
  EXPECT_EQ(a.released_chunks(), 4u);
  // The first kKeepEmpty chunks to empty were kept; the last four are the host's again.
  for (std::size_t i = 0; i < kChunks; ++i) {
    const std::size_t resident = resident_pages(chunk_starts[i], BlockArena::kChunk);
    if (i < BlockArena::kKeepEmpty) {
      EXPECT_GT(resident, 0u) << "chunk " << i;
    } else {
      EXPECT_EQ(resident, 0u) << "chunk " << i << " was given back";
    }
  }
  // Everything can be handed out again, and what comes from a given-back chunk reads as zero.
  std::size_t fresh = 0;
  for (std::size_t i = 0; i < kChunks * kPerChunk; ++i) {
    void* b = a.allocate(&zeroed);
    if (zeroed) {
      ++fresh;
      const auto* w = static_cast<const std::uint64_t*>(b);
      ASSERT_EQ(w[0] | w[100] | w[511], 0u);
    }
  }
  EXPECT_EQ(fresh, 4 * kPerChunk);
  EXPECT_EQ(a.resident_chunks(), kChunks);
}

// Contents survive a round trip through a freed and reused frame: PhysMem zeroes a reused block.
TEST(UnitBlockArena, PhysMemZeroesReusedBlocks) {
  PhysMem mem(64 * PAGE_SIZE);
  Page* p = mem.alloc_page();
  for (unsigned off = 0; off < PAGE_SIZE; off += 8) mem.store_word(*p, off, ~0ull);
  mem.put_page(*p);
  Page* q = mem.alloc_page();
  mem.store_word(*q, 8, 1);
  EXPECT_EQ(mem.load_word(*q, 0), 0u);
  EXPECT_EQ(mem.load_word(*q, PAGE_SIZE - 8), 0u);
  EXPECT_EQ(mem.load_word(*q, 8), 1u);
}

// A zap of more pages than one mmu_gather batch holds: the batch is flushed and freed as the zap
// goes (one TLB flush per full batch, and one at the end), and the result is the same.
TEST(UnitMmGather, ZapFlushesEachFullBatch) {
  constexpr std::uint64_t kPages = 2 * MmGather::kMaxPages + 100;
  Machine m(MachineConfig{.memory_bytes = 4 * kPages * PAGE_SIZE});
  const std::uint64_t initial = m.free_pages();
  Process& p = m.spawn();
  const vaddr_t a = p.mmap(0, kPages * PAGE_SIZE, Prot::read | Prot::write,
                           MapFlags::private_ | MapFlags::anonymous | MapFlags::populate)
                        .value();
  for (std::uint64_t i = 0; i < kPages; i += 97) p.store(a + i * PAGE_SIZE, i + 1).value();
  m.check_invariants();
  const std::uint64_t free_before = m.free_pages(), tables_before = p.pgtables_bytes();
  const std::uint64_t ranges = detail::Access::kernel(m).tlb_stats.flush_range;
  ASSERT_TRUE(p.munmap(a, kPages * PAGE_SIZE));
  EXPECT_EQ(detail::Access::kernel(m).tlb_stats.flush_range - ranges, 3u)
      << "two full batches flushed mid-zap, the rest at tlb_finish_mmu";
  EXPECT_EQ(m.free_pages() - free_before, kPages + (tables_before - p.pgtables_bytes()) / PAGE_SIZE)
      << "every page and every table freed went back";
  EXPECT_EQ(p.rss().anon, 0u);
  m.check_invariants();
  // exit_mmap: one full-mm flush per full batch and one at the end.
  const vaddr_t b = p.mmap(0, kPages * PAGE_SIZE, Prot::read | Prot::write,
                           MapFlags::private_ | MapFlags::anonymous | MapFlags::populate)
                        .value();
  p.store(b, 1).value();
  const std::uint64_t mms = detail::Access::kernel(m).tlb_stats.flush_mm;
  p.exit();
  EXPECT_EQ(detail::Access::kernel(m).tlb_stats.flush_mm - mms, 3u);
  EXPECT_EQ(m.free_pages(), initial);
  m.check_invariants();
}

// On-demand-fork's last holder of shared tables releases their pages through the exit's gather
// (dereference_pte_table): a full batch is flushed as zap_pte_range flushes one, so the exit of
// more pages than two batches takes the same three full-mm flushes as a classic exit, and the
// gather never holds more than one batch.
TEST(UnitMmGather, LastHolderOfSharedTablesFlushesEachFullBatch) {
  constexpr std::uint64_t kPages = 2 * MmGather::kMaxPages + 100;
  Machine m(MachineConfig{.memory_bytes = 4 * kPages * PAGE_SIZE});
  const std::uint64_t initial = m.free_pages();
  Process& parent = m.spawn();
  const vaddr_t a = parent
                        .mmap(0, kPages * PAGE_SIZE, Prot::read | Prot::write,
                              MapFlags::private_ | MapFlags::anonymous | MapFlags::populate)
                        .value();
  parent.set_cow_pte("on_demand_fork").value();
  for (std::uint64_t i = 0; i < kPages; i += 97) parent.store(a + i * PAGE_SIZE, i + 1).value();
  Process& child = *parent.fork().value();
  m.check_invariants();
  ASSERT_EQ(*child.load(a + 97 * PAGE_SIZE), 98u);
  child.exit();  // drops its references to the shared tables; the pages stay
  m.check_invariants();
  ASSERT_EQ(*parent.load(a + 97 * PAGE_SIZE), 98u);
  const std::uint64_t mms = detail::Access::kernel(m).tlb_stats.flush_mm;
  parent.exit();  // the last holder: every page goes through the gather
  EXPECT_EQ(detail::Access::kernel(m).tlb_stats.flush_mm - mms, 3u)
      << "two full batches flushed mid-release, the rest at tlb_finish_mmu";
  EXPECT_EQ(m.free_pages(), initial);
  m.check_invariants();
}

// The same under every sound fork policy, with the tables shared by fork: a parent of more pages
// than two batches forks, the child writes a page in each 2 MiB span, the parent unmaps half and
// both exit; check_invariants() after each step, and every frame comes back.
class UnitMmGatherPolicy : public ::testing::TestWithParam<std::string> {};

TEST_P(UnitMmGatherPolicy, SharedTablesZapInBatches) {
  constexpr std::uint64_t kPages = 2 * MmGather::kMaxPages + 1000;
  constexpr std::uint64_t kLen = (kPages * PAGE_SIZE + PMD_SIZE - 1) & ~(PMD_SIZE - 1);
  Machine m(MachineConfig{.memory_bytes = 4 * kLen});
  const std::uint64_t initial = m.free_pages();
  Process& parent = m.spawn();
  const vaddr_t a =
      parent
          .mmap(0x7e0000000000ull, kLen, Prot::read | Prot::write,
                MapFlags::private_ | MapFlags::anonymous | MapFlags::fixed | MapFlags::populate)
          .value();
  if (GetParam() != "classic") parent.set_cow_pte(GetParam()).value();
  for (std::uint64_t off = 0; off < kLen; off += 64 * PAGE_SIZE)
    parent.store(a + off, off + 1).value();
  Process& child = *parent.fork().value();
  m.check_invariants();
  for (std::uint64_t off = 0; off < kLen; off += PMD_SIZE) child.store(a + off, 7).value();
  m.check_invariants();
  ASSERT_TRUE(parent.munmap(a, kLen / 2));
  m.check_invariants();
  for (std::uint64_t off = kLen / 2; off < kLen; off += 64 * PAGE_SIZE)
    ASSERT_EQ(*parent.load(a + off), off + 1);
  for (std::uint64_t off = 0; off < kLen; off += 64 * PAGE_SIZE)
    ASSERT_EQ(*child.load(a + off), off % PMD_SIZE ? off + 1 : 7);
  child.exit();
  m.check_invariants();
  parent.exit();
  m.check_invariants();
  EXPECT_EQ(m.free_pages(), initial);
}

INSTANTIATE_TEST_SUITE_P(EveryPolicy, UnitMmGatherPolicy,
                         ::testing::ValuesIn(sound_fork_policy_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace cowpte
