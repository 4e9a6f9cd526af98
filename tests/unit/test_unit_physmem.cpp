// Unit tests of struct page and PhysMem (include/cowpte/model/page.hpp): order-0 allocation, the
// free list, fault injection and the lazily allocated frame contents.

#include <gtest/gtest.h>

#include <cowpte/model/page.hpp>
#include <cstdint>
#include <set>
#include <vector>

namespace cowpte {
namespace {

constexpr std::uint64_t kFrames = 32;

class UnitPhysMem : public ::testing::Test {
 protected:
  PhysMem mem{kFrames * PAGE_SIZE};
};

TEST_F(UnitPhysMem, SizeOfPageFitsLinuxBudget) {
  EXPECT_LE(sizeof(Page), 64u);
  EXPECT_EQ(sizeof(SpinLock), 4u) << "spinlock_t is embedded in struct page";
}

TEST_F(UnitPhysMem, FreshMemory) {
  EXPECT_EQ(mem.total_pages(), kFrames);
  EXPECT_EQ(mem.free_pages(), kFrames);
  EXPECT_EQ(mem.watermark(), 0u);
  EXPECT_EQ(mem.host_blocks(), 0u);
  EXPECT_TRUE(mem.valid(Pfn{kFrames - 1}));
  EXPECT_FALSE(mem.valid(Pfn{kFrames}));
}

TEST_F(UnitPhysMem, AllocGivesRefcountOneMapcountZero) {
  Page* p = mem.alloc_page();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(page_count(*p), 1);
  EXPECT_EQ(page_mapcount(*p), 0);
  EXPECT_EQ(p->_mapcount, -1);
  EXPECT_EQ(p->flags, 0u);
  EXPECT_FALSE(p->test(PG_free));
  EXPECT_EQ(p->data, nullptr) << "a fresh frame owns no host memory";
  EXPECT_EQ(p->mapping, nullptr);
  EXPECT_FALSE(p->ptl.is_locked());
  EXPECT_EQ(mem.load_word(*p, 0), 0u);
  EXPECT_EQ(mem.load_word(*p, PAGE_SIZE - 8), 0u);
  EXPECT_EQ(mem.free_pages(), kFrames - 1);
  EXPECT_TRUE(mem.ever_allocated(mem.pfn(*p)));
  EXPECT_EQ(&mem.page(mem.pfn(*p)), p) << "pfn_to_page(page_to_pfn(p)) == p";
}

TEST_F(UnitPhysMem, DistinctFramesAndFreePagesAccounting) {
  std::set<std::uint64_t> pfns;
  std::vector<Page*> pages;
  for (std::uint64_t i = 0; i < 10; ++i) {
    Page* p = mem.alloc_page();
    ASSERT_NE(p, nullptr);
    EXPECT_TRUE(pfns.insert(raw(mem.pfn(*p))).second) << "frame handed out twice";
    EXPECT_LT(raw(mem.pfn(*p)), kFrames);
    pages.push_back(p);
    EXPECT_EQ(mem.free_pages(), kFrames - i - 1);
  }
  EXPECT_EQ(mem.allocations(), 10u);
  for (std::uint64_t i = 0; i < pages.size(); ++i) {
    mem.put_page(*pages[i]);
    EXPECT_EQ(mem.free_pages(), kFrames - 10 + i + 1);
  }
  EXPECT_EQ(mem.free_pages(), kFrames);
}

TEST_F(UnitPhysMem, PutPageFreesOnLastReference) {
  Page* p = mem.alloc_page();
  ASSERT_NE(p, nullptr);
  get_page(*p);
  EXPECT_EQ(page_count(*p), 2);
  mem.put_page(*p);
  EXPECT_EQ(page_count(*p), 1);
  EXPECT_FALSE(p->test(PG_free));
  EXPECT_EQ(mem.free_pages(), kFrames - 1);
  mem.put_page(*p);
  EXPECT_EQ(page_count(*p), 0);
  EXPECT_TRUE(p->test(PG_free));
  EXPECT_EQ(mem.free_pages(), kFrames);
}

TEST_F(UnitPhysMem, FreeClearsStateAndReallocResetsIt) {
  Page* p = mem.alloc_page();
  ASSERT_NE(p, nullptr);
  p->set(PG_anon);
  p->set(PG_anon_exclusive);
  p->set(PG_dirty);
  p->_mapcount = 0;
  p->index = 77;
  mem.free_page(*p);
  EXPECT_EQ(p->flags, static_cast<std::uint32_t>(PG_free));
  EXPECT_EQ(p->_mapcount, -1);
  EXPECT_EQ(p->index, 0u);
  Page* q = mem.alloc_page();
  ASSERT_EQ(q, p) << "the only freed frame comes back first";
  EXPECT_EQ(q->flags, 0u) << "PG_free and the old flags are gone";
  EXPECT_EQ(page_count(*q), 1);
  EXPECT_EQ(page_mapcount(*q), 0);
}

TEST_F(UnitPhysMem, FreeListIsLifo) {
  Page* a = mem.alloc_page();
  Page* b = mem.alloc_page();
  Page* c = mem.alloc_page();
  ASSERT_TRUE(a && b && c);
  const std::uint64_t wm = mem.watermark();
  mem.put_page(*a);
  mem.put_page(*c);
  mem.put_page(*b);
  // Freed a, c, b: the next allocations return b, c, a, without raising the watermark.
  EXPECT_EQ(mem.alloc_page(), b);
  EXPECT_EQ(mem.alloc_page(), c);
  EXPECT_EQ(mem.alloc_page(), a);
  EXPECT_EQ(mem.watermark(), wm);
  // The free list is empty again: the next frame is a new one.
  Page* d = mem.alloc_page();
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(d != a && d != b && d != c);
  EXPECT_EQ(mem.watermark(), wm + 1);
}

TEST_F(UnitPhysMem, OutOfMemoryReturnsNullptr) {
  std::vector<Page*> pages;
  for (std::uint64_t i = 0; i < kFrames; ++i) {
    Page* p = mem.alloc_page();
    ASSERT_NE(p, nullptr) << "allocation " << i;
    pages.push_back(p);
  }
  EXPECT_EQ(mem.free_pages(), 0u);
  EXPECT_EQ(mem.alloc_page(), nullptr);
  EXPECT_EQ(mem.alloc_page(), nullptr);
  EXPECT_EQ(mem.free_pages(), 0u);
  mem.put_page(*pages[5]);
  EXPECT_EQ(mem.free_pages(), 1u);
  EXPECT_EQ(mem.alloc_page(), pages[5]);
  EXPECT_EQ(mem.alloc_page(), nullptr);
}

TEST_F(UnitPhysMem, FailNthAllocationFailsExactlyOnce) {
  mem.fail_nth_allocation(3);
  Page* a = mem.alloc_page();
  Page* b = mem.alloc_page();
  EXPECT_NE(a, nullptr);
  EXPECT_NE(b, nullptr);
  const std::uint64_t before = mem.free_pages();
  EXPECT_EQ(mem.alloc_page(), nullptr) << "the 3rd allocation fails";
  EXPECT_EQ(mem.free_pages(), before) << "a failed allocation takes no frame";
  for (int i = 0; i < 10; ++i) EXPECT_NE(mem.alloc_page(), nullptr) << "only once, i=" << i;
}

TEST_F(UnitPhysMem, FailNthAllocationOneIsTheNextAndZeroDisables) {
  mem.fail_nth_allocation(1);
  EXPECT_EQ(mem.alloc_page(), nullptr);
  EXPECT_NE(mem.alloc_page(), nullptr);
  mem.fail_nth_allocation(2);
  mem.fail_nth_allocation(0);
  for (int i = 0; i < 5; ++i) EXPECT_NE(mem.alloc_page(), nullptr);
  // should_fail_alloc is the shared hook: a VMA allocation counts towards n as well.
  mem.fail_nth_allocation(2);
  EXPECT_FALSE(mem.should_fail_alloc());
  EXPECT_EQ(mem.alloc_page(), nullptr);
}

TEST_F(UnitPhysMem, ZeroStoreAllocatesNoHostBlock) {
  Page* p = mem.alloc_page();
  ASSERT_NE(p, nullptr);
  mem.store_word(*p, 8, 0);
  EXPECT_EQ(mem.host_blocks(), 0u);
  EXPECT_EQ(p->data, nullptr);
  EXPECT_EQ(mem.load_word(*p, 8), 0u);
}

TEST_F(UnitPhysMem, NonZeroStoreAllocatesOneBlock) {
  Page* p = mem.alloc_page();
  ASSERT_NE(p, nullptr);
  mem.store_word(*p, 16, 0xDEADBEEF);
  EXPECT_EQ(mem.host_blocks(), 1u);
  EXPECT_NE(p->data, nullptr);
  EXPECT_EQ(mem.load_word(*p, 16), 0xDEADBEEFu);
  EXPECT_EQ(mem.load_word(*p, 8), 0u) << "the rest of the block is zeroed";
  EXPECT_EQ(mem.load_word(*p, PAGE_SIZE - 8), 0u);
  mem.store_word(*p, PAGE_SIZE - 8, 0x1234);
  mem.store_word(*p, 16, 0);  // a zero store into an existing block writes the zero
  EXPECT_EQ(mem.host_blocks(), 1u) << "the page's second store reuses its block";
  EXPECT_EQ(mem.load_word(*p, 16), 0u);
  EXPECT_EQ(mem.load_word(*p, PAGE_SIZE - 8), 0x1234u);
  // A second page gets a block of its own.
  Page* q = mem.alloc_page();
  ASSERT_NE(q, nullptr);
  mem.store_word(*q, 0, 1);
  EXPECT_EQ(mem.host_blocks(), 2u);
  EXPECT_EQ(mem.load_word(*p, 0), 0u);
}

TEST_F(UnitPhysMem, CopyPageOfZeroPageAllocatesNothing) {
  Page* src = mem.alloc_page();
  Page* dst = mem.alloc_page();
  ASSERT_TRUE(src && dst);
  mem.copy_page(*dst, *src);
  EXPECT_EQ(mem.host_blocks(), 0u);
  EXPECT_EQ(dst->data, nullptr);
  // A destination with contents is emptied by a copy of a zero page.
  mem.store_word(*dst, 24, 99);
  EXPECT_EQ(mem.host_blocks(), 1u);
  mem.copy_page(*dst, *src);
  EXPECT_EQ(mem.host_blocks(), 0u);
  EXPECT_EQ(mem.load_word(*dst, 24), 0u);
}

TEST_F(UnitPhysMem, CopyPageCopiesContents) {
  Page* src = mem.alloc_page();
  Page* dst = mem.alloc_page();
  ASSERT_TRUE(src && dst);
  mem.store_word(*src, 0, 0x1111);
  mem.store_word(*src, 2048, 0x2222);
  mem.store_word(*dst, 8, 0x3333);  // overwritten by the copy
  EXPECT_EQ(mem.host_blocks(), 2u);
  mem.copy_page(*dst, *src);
  EXPECT_EQ(mem.host_blocks(), 2u) << "dst's old block is released, a new one made";
  EXPECT_NE(dst->data, src->data);
  EXPECT_EQ(mem.load_word(*dst, 0), 0x1111u);
  EXPECT_EQ(mem.load_word(*dst, 2048), 0x2222u);
  EXPECT_EQ(mem.load_word(*dst, 8), 0u);
  // The copy is independent of the source.
  mem.store_word(*src, 0, 0x4444);
  EXPECT_EQ(mem.load_word(*dst, 0), 0x1111u);
  mem.store_word(*dst, 2048, 0x5555);
  EXPECT_EQ(mem.load_word(*src, 2048), 0x2222u);
}

TEST_F(UnitPhysMem, FreeReleasesContents) {
  Page* p = mem.alloc_page();
  ASSERT_NE(p, nullptr);
  mem.store_word(*p, 40, 7);
  EXPECT_EQ(mem.host_blocks(), 1u);
  mem.put_page(*p);
  EXPECT_EQ(mem.host_blocks(), 0u);
  EXPECT_EQ(p->data, nullptr);
  Page* q = mem.alloc_page();
  ASSERT_EQ(q, p);
  EXPECT_EQ(mem.load_word(*q, 40), 0u) << "a reused frame reads as zeros";
}

TEST_F(UnitPhysMem, TableBlocksAreZeroedAndCounted) {
  // Dirty a host block and give it back to the pool first, so that the table may reuse it.
  Page* p = mem.alloc_page();
  ASSERT_NE(p, nullptr);
  for (unsigned off = 0; off < PAGE_SIZE; off += 8) mem.store_word(*p, off, ~0ull);
  mem.put_page(*p);
  Page* t = mem.alloc_page();
  ASSERT_NE(t, nullptr);
  t->data = mem.alloc_table_block();
  EXPECT_EQ(mem.host_blocks(), 1u);
  for (unsigned i = 0; i < PTRS_PER_TABLE; ++i) ASSERT_EQ(t->data[i], 0u) << i;
  mem.put_page(*t);
  EXPECT_EQ(mem.host_blocks(), 0u);
}

}  // namespace
}  // namespace cowpte
