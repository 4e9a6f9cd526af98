// Calls with arguments Linux rejects: each must return the errno Linux returns, change nothing a
// window shows (free_pages, every struct page, smaps, rss, VmPTE, pagemap, page walks) and leave
// the invariants intact. The expected errnos follow v6.1/v6.2: do_mmap()/get_unmapped_area()
// (mm/mmap.c), __do_munmap(), do_mprotect_pkey() (mm/mprotect.c), do_madvise() and
// madvise_populate() (mm/madvise.c), check_vma_flags() and __get_user_pages() (mm/gup.c), and
// the x86 page-fault handler's access_error() for loads and stores.
#include <gtest/gtest.h>

#include <cowpte/cowpte.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "snapshot_util.hpp"

namespace {

using cowpte::Advice;
using cowpte::Errno;
using cowpte::Machine;
using cowpte::MachineConfig;
using cowpte::MapFlags;
using cowpte::PinFlags;
using cowpte::Process;
using cowpte::Prot;
using cowpte::vaddr_t;
using cowpte_test::ErrName;
using cowpte_test::ErrOf;
using cowpte_test::InvariantsHold;

constexpr std::uint64_t kPage = 4096;
constexpr vaddr_t kTaskSize = 0x7ffffffff000;  // TASK_SIZE_MAX on x86-64 with 4-level paging
constexpr Prot kRW = Prot::read | Prot::write;
constexpr MapFlags kPriv = MapFlags::private_ | MapFlags::anonymous;
constexpr MapFlags kFixedPriv = kPriv | MapFlags::fixed;
constexpr MapFlags kFixedShared = MapFlags::shared | MapFlags::anonymous | MapFlags::fixed;

// The layout every test starts from (the same in the parent and, through fork, the child).
constexpr vaddr_t kA = 0x10000000;     // private RW, 16 pages: 0-7 written, 8-11 read (zero page)
constexpr vaddr_t kHole = 0x10080000;  // unmapped, 16 pages between kA and kRo
constexpr vaddr_t kRo = 0x10100000;    // private R/O, 4 pages: 0-1 read (zero page)
constexpr vaddr_t kNone = 0x10200000;  // PROT_NONE, 4 pages
constexpr vaddr_t kShm = 0x10300000;   // shared anonymous RW, 4 pages: 0-1 written, 2 read
constexpr vaddr_t kX = 0x3fffc000;     // private RW, 8 pages across the 1 GiB boundary, written

#define BI_ASSERT_OK(expr)                                \
  do {                                                    \
    const auto bi_r_ = (expr);                            \
    ASSERT_EQ(ErrName(ErrOf(bi_r_)), "success") << #expr; \
  } while (0)

// `expr` must fail with `err`, and the machine must look exactly as it did before the call.
#define EXPECT_REJECTED(expr, err)                                                  \
  do {                                                                              \
    SCOPED_TRACE(#expr);                                                            \
    const cowpte_test::MachineSnapshot bi_before_ = cowpte_test::TakeSnapshot(*m_); \
    const auto bi_r_ = (expr);                                                      \
    EXPECT_EQ(ErrName(ErrOf(bi_r_)), ErrName(err)) << #expr;                        \
    ExpectUnchanged(bi_before_);                                                    \
  } while (0)

// `expr` must succeed (Linux returns 0) without changing anything.
#define EXPECT_NOOP_SUCCESS(expr)                                                   \
  do {                                                                              \
    SCOPED_TRACE(#expr);                                                            \
    const cowpte_test::MachineSnapshot bi_before_ = cowpte_test::TakeSnapshot(*m_); \
    const auto bi_r_ = (expr);                                                      \
    EXPECT_EQ(ErrName(ErrOf(bi_r_)), "success") << #expr;                           \
    ExpectUnchanged(bi_before_);                                                    \
  } while (0)

class BadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    m_ = std::make_unique<Machine>(MachineConfig{.memory_bytes = 32ull << 20});
    Process& p = m_->spawn();
    parent_ = &p;

    const auto a = p.mmap(kA, 16 * kPage, kRW, kFixedPriv);
    ASSERT_TRUE(a.has_value()) << ErrName(ErrOf(a));
    ASSERT_EQ(*a, kA);
    for (int i = 0; i < 8; ++i) BI_ASSERT_OK(p.store(kA + i * kPage, 0xA000 + i));
    for (int i = 8; i < 12; ++i) BI_ASSERT_OK(p.load(kA + i * kPage));

    BI_ASSERT_OK(p.mmap(kRo, 4 * kPage, Prot::read, kFixedPriv));
    BI_ASSERT_OK(p.load(kRo));
    BI_ASSERT_OK(p.load(kRo + kPage));

    BI_ASSERT_OK(p.mmap(kNone, 4 * kPage, Prot::none, kFixedPriv));

    BI_ASSERT_OK(p.mmap(kShm, 4 * kPage, kRW, kFixedShared));
    BI_ASSERT_OK(p.store(kShm, 0x5000));
    BI_ASSERT_OK(p.store(kShm + kPage, 0x5001));
    BI_ASSERT_OK(p.load(kShm + 2 * kPage));

    BI_ASSERT_OK(p.mmap(kX, 8 * kPage, kRW, kFixedPriv));
    for (int i = 0; i < 8; ++i) BI_ASSERT_OK(p.store(kX + i * kPage, 0xB000 + i));

    // A R/W long-term pin (fork must give the child a copy) and a FOLL_GET reference.
    BI_ASSERT_OK(p.pin(kA, kPage, PinFlags::write | PinFlags::longterm));
    BI_ASSERT_OK(p.gup_get(kA + kPage, kPage));

    auto c = p.fork();
    ASSERT_TRUE(c.has_value()) << ErrName(ErrOf(c));
    child_ = *c;
    BI_ASSERT_OK(child_->store(kA + 2 * kPage, 0xC002));  // COW in the child
    BI_ASSERT_OK(p.store(kX, 0xD000));                    // COW in the parent
    // A R/O long-term pin of a COW-shared page: unshared into an exclusive copy.
    BI_ASSERT_OK(p.pin(kA + 4 * kPage, kPage, PinFlags::longterm));

    // A process that has exited: the object stays valid, every call answers ESRCH.
    Process& e = m_->spawn();
    exited_ = &e;
    exited_pid_ = e.pid();
    BI_ASSERT_OK(e.mmap(kA, 4 * kPage, kRW, kFixedPriv));
    BI_ASSERT_OK(e.store(kA, 1));
    e.exit();

    ASSERT_TRUE(InvariantsHold(*m_));
    base_ = cowpte_test::TakeSnapshot(*m_);
    ASSERT_EQ(base_.procs.size(), 2u);
  }

  // The machine shows what `before` shows (the state just before the call under test; each
  // call is compared with its own before-state so that one bad call does not blame the next).
  void ExpectUnchanged(const cowpte_test::MachineSnapshot& before) {
    const cowpte_test::MachineSnapshot now = cowpte_test::TakeSnapshot(*m_);
    EXPECT_TRUE(now == before) << "the machine changed (before vs after):\n"
                               << cowpte_test::DiffSnapshots(before, now);
    EXPECT_TRUE(InvariantsHold(*m_));
  }

  std::vector<Process*> Live() const { return {parent_, child_}; }

  std::unique_ptr<Machine> m_;
  Process* parent_ = nullptr;
  Process* child_ = nullptr;
  Process* exited_ = nullptr;
  int exited_pid_ = 0;
  cowpte_test::MachineSnapshot base_;
};

TEST_F(BadInput, SnapshotSeesTheState) {
  // The helper itself: equal to itself, and it sees pages of both processes.
  EXPECT_TRUE(cowpte_test::TakeSnapshot(*m_) == base_);
  ASSERT_EQ(base_.procs.size(), 2u);
  EXPECT_EQ(base_.procs[0].pid, parent_->pid());
  EXPECT_EQ(base_.procs[1].pid, child_->pid());
  EXPECT_EQ(base_.procs[0].smaps.size(), 5u);
  EXPECT_EQ(base_.procs[1].smaps.size(), 5u);
  EXPECT_EQ(base_.procs[0].pages.size(), 16u + 4u + 4u + 4u + 8u);
  // A struct page change is seen and reported.
  cowpte_test::MachineSnapshot changed = base_;
  changed.frames[3].refcount += 1;
  EXPECT_FALSE(changed == base_);
  EXPECT_NE(cowpte_test::DiffSnapshots(base_, changed).find("page_info(3)"), std::string::npos);
}

// ---- mmap ----

TEST_F(BadInput, MmapFixedUnalignedAddress) {
  // get_unmapped_area(): offset_in_page(addr) -> EINVAL, before anything is unmapped.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->mmap(kA + 0x800, kPage, kRW, kFixedPriv), Errno::inval);
    EXPECT_REJECTED(p->mmap(kA + 1, 4 * kPage, kRW, kFixedPriv), Errno::inval);
    EXPECT_REJECTED(p->mmap(kHole + 8, kPage, kRW, kFixedPriv), Errno::inval);
    EXPECT_REJECTED(p->mmap(kShm + 0x10, kPage, kRW, kFixedShared), Errno::inval);
  }
}

TEST_F(BadInput, MmapZeroLength) {
  // do_mmap(): if (!len) return -EINVAL.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->mmap(0, 0, kRW, kPriv), Errno::inval);
    EXPECT_REJECTED(p->mmap(kA, 0, kRW, kFixedPriv), Errno::inval);
    EXPECT_REJECTED(p->mmap(kHole, 0, kRW, kFixedShared), Errno::inval);
  }
}

TEST_F(BadInput, MmapLengthTooLarge) {
  // do_mmap(): PAGE_ALIGN(len) == 0 -> ENOMEM; get_unmapped_area(): len > TASK_SIZE -> ENOMEM.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->mmap(0, ~0ull, kRW, kPriv), Errno::nomem);
    EXPECT_REJECTED(p->mmap(0, ~0ull - kPage + 2, kRW, kPriv), Errno::nomem);
    EXPECT_REJECTED(p->mmap(0, kTaskSize + kPage, kRW, kPriv), Errno::nomem);
    EXPECT_REJECTED(p->mmap(kA, 1ull << 47, kRW, kFixedPriv), Errno::nomem);
  }
}

TEST_F(BadInput, MmapFixedOutsideUserAddressSpace) {
  // get_unmapped_area(): addr > TASK_SIZE - len -> ENOMEM (x86 returns a MAP_FIXED addr as is).
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->mmap(kTaskSize, kPage, kRW, kFixedPriv), Errno::nomem);
    EXPECT_REJECTED(p->mmap(kTaskSize - kPage, 2 * kPage, kRW, kFixedPriv), Errno::nomem);
    EXPECT_REJECTED(p->mmap(0x800000000000, kPage, kRW, kFixedPriv), Errno::nomem);
    EXPECT_REJECTED(p->mmap(0x0000800000001000, kPage, kRW, kFixedShared), Errno::nomem);
    EXPECT_REJECTED(p->mmap(0xffff800000000000, kPage, kRW, kFixedPriv), Errno::nomem);
    EXPECT_REJECTED(p->mmap(0xfffffffffffff000, kPage, kRW, kFixedPriv), Errno::nomem);
  }
}

TEST_F(BadInput, MmapFixedNoreplaceOverExistingMapping) {
  // do_mmap(): MAP_FIXED_NOREPLACE and find_vma_intersection() -> EEXIST.
  const MapFlags noreplace = kPriv | MapFlags::fixed_noreplace;
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->mmap(kA + 4 * kPage, kPage, kRW, noreplace), Errno::exist);
    EXPECT_REJECTED(p->mmap(kA - kPage, 2 * kPage, kRW, noreplace), Errno::exist);
    EXPECT_REJECTED(p->mmap(kHole, kRo - kHole + kPage, kRW, noreplace), Errno::exist);
  }
}

TEST_F(BadInput, MmapSharedAndPrivateBothOrNeither) {
  // do_mmap() for anonymous memory: switch (flags & MAP_TYPE) accepts only MAP_SHARED or
  // MAP_PRIVATE; 0 and 0x3 (MAP_SHARED_VALIDATE) -> EINVAL. Checked before MAP_FIXED unmaps.
  const MapFlags both = MapFlags::shared | MapFlags::private_ | MapFlags::anonymous;
  const MapFlags neither = MapFlags::anonymous;
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->mmap(0, kPage, kRW, both), Errno::inval);
    EXPECT_REJECTED(p->mmap(kA, 4 * kPage, kRW, both | MapFlags::fixed), Errno::inval);
    EXPECT_REJECTED(p->mmap(0, kPage, kRW, neither), Errno::inval);
    EXPECT_REJECTED(p->mmap(kA, 4 * kPage, kRW, neither | MapFlags::fixed), Errno::inval);
  }
}

TEST_F(BadInput, MmapWithoutAnonymousHasNoFile) {
  // ksys_mmap_pgoff(): without MAP_ANONYMOUS, fget(fd) fails (there is no fd) -> EBADF.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->mmap(0, kPage, kRW, MapFlags::private_), Errno::badf);
    EXPECT_REJECTED(p->mmap(0, kPage, kRW, MapFlags::shared), Errno::badf);
    EXPECT_REJECTED(p->mmap(kA, 4 * kPage, kRW, MapFlags::private_ | MapFlags::fixed), Errno::badf);
    EXPECT_REJECTED(p->mmap(kShm, kPage, kRW, MapFlags::shared | MapFlags::fixed), Errno::badf);
  }
}

// ---- munmap ----

TEST_F(BadInput, MunmapBadArguments) {
  // __do_munmap(): offset_in_page(start) || start > TASK_SIZE || len > TASK_SIZE - start -> EINVAL;
  // end == start (len 0) -> EINVAL.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->munmap(kA + 0x800, kPage), Errno::inval);
    EXPECT_REJECTED(p->munmap(kA + 8, 16 * kPage), Errno::inval);
    EXPECT_REJECTED(p->munmap(kA, 0), Errno::inval);
    EXPECT_REJECTED(p->munmap(kHole, 0), Errno::inval);
    EXPECT_REJECTED(p->munmap(kA, 0xfffffffff0000000), Errno::inval);  // addr + len wraps
    EXPECT_REJECTED(p->munmap(kA, ~0ull), Errno::inval);
    EXPECT_REJECTED(p->munmap(kA, kTaskSize), Errno::inval);  // runs past TASK_SIZE
    EXPECT_REJECTED(p->munmap(kX, kTaskSize - kX + kPage), Errno::inval);
    EXPECT_REJECTED(p->munmap(kTaskSize + kPage, kPage), Errno::inval);
    EXPECT_REJECTED(p->munmap(0x800000000000, kPage), Errno::inval);  // non-canonical
    EXPECT_REJECTED(p->munmap(0xffff800000000000, kPage), Errno::inval);
  }
}

// ---- mprotect ----

TEST_F(BadInput, MprotectUnalignedAddress) {
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->mprotect(kA + 0x800, kPage, Prot::read), Errno::inval);
    EXPECT_REJECTED(p->mprotect(kX + 1, 8 * kPage, Prot::none), Errno::inval);
    EXPECT_REJECTED(p->mprotect(kA + 8, 0, Prot::read), Errno::inval);  // checked before len 0
  }
}

TEST_F(BadInput, MprotectZeroLengthSucceedsWithoutChange) {
  // do_mprotect_pkey(): if (!len) return 0 -- before the overflow and prot checks.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_NOOP_SUCCESS(p->mprotect(kA, 0, Prot::read));
    EXPECT_NOOP_SUCCESS(p->mprotect(kX, 0, Prot::none));
    EXPECT_NOOP_SUCCESS(p->mprotect(kHole, 0, kRW));
    EXPECT_NOOP_SUCCESS(p->mprotect(kA, 0, Prot(0x10)));
  }
}

TEST_F(BadInput, MprotectLengthOverflow) {
  // do_mprotect_pkey(): end = start + PAGE_ALIGN(len); if (end <= start) return -ENOMEM.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->mprotect(kA, 0xfffffffff0000000, Prot::read), Errno::nomem);
    EXPECT_REJECTED(p->mprotect(kA, ~0ull, Prot::read), Errno::nomem);
    EXPECT_REJECTED(p->mprotect(kX, ~0ull - kPage, Prot::none), Errno::nomem);
  }
}

TEST_F(BadInput, MprotectUnknownProtBits) {
  // arch_validate_prot(): bits beyond READ|WRITE|EXEC|SEM -> EINVAL.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->mprotect(kA, kPage, Prot(0x10)), Errno::inval);
    EXPECT_REJECTED(p->mprotect(kA, 16 * kPage, Prot::read | Prot(0x10)), Errno::inval);
    EXPECT_REJECTED(p->mprotect(kX, 8 * kPage, Prot(0x80000000)), Errno::inval);
    EXPECT_REJECTED(p->mprotect(kRo, kPage, kRW | Prot(0x40)), Errno::inval);
  }
}

TEST_F(BadInput, MprotectOverHole) {
  // No VMA at start (vma->vm_start > start, or none at all) -> ENOMEM before anything changes.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->mprotect(kHole, kPage, Prot::read), Errno::nomem);
    EXPECT_REJECTED(p->mprotect(kHole, 16 * kPage, Prot::none), Errno::nomem);
    EXPECT_REJECTED(p->mprotect(kRo - kPage, 2 * kPage, kRW), Errno::nomem);  // hole, then kRo
    EXPECT_REJECTED(p->mprotect(0, kPage, Prot::read), Errno::nomem);
    EXPECT_REJECTED(p->mprotect(kTaskSize, kPage, Prot::read), Errno::nomem);
    EXPECT_REJECTED(p->mprotect(0x800000000000, kPage, Prot::read), Errno::nomem);
  }
}

// ---- madvise ----

constexpr Advice kAllAdvice[] = {Advice::dontneed, Advice::dontfork,      Advice::dofork,
                                 Advice::pageout,  Advice::populate_read, Advice::populate_write};

TEST_F(BadInput, MadviseUnalignedAddress) {
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    for (Advice adv : kAllAdvice) {
      SCOPED_TRACE(static_cast<int>(adv));
      EXPECT_REJECTED(p->madvise(kA + 0x800, kPage, adv), Errno::inval);
      EXPECT_REJECTED(p->madvise(kShm + 8, 2 * kPage, adv), Errno::inval);
    }
  }
}

TEST_F(BadInput, MadviseZeroLengthSucceedsWithoutChange) {
  // do_madvise(): if (end == start) return 0.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    for (Advice adv : kAllAdvice) {
      SCOPED_TRACE(static_cast<int>(adv));
      EXPECT_NOOP_SUCCESS(p->madvise(kA, 0, adv));
      EXPECT_NOOP_SUCCESS(p->madvise(kHole, 0, adv));
      EXPECT_NOOP_SUCCESS(p->madvise(kRo, 0, adv));
    }
  }
}

TEST_F(BadInput, MadviseLengthOverflow) {
  // do_madvise(): len_in && !PAGE_ALIGN(len_in) -> EINVAL; end < start -> EINVAL.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    for (Advice adv : kAllAdvice) {
      SCOPED_TRACE(static_cast<int>(adv));
      EXPECT_REJECTED(p->madvise(kA, 0xfffffffff0000000, adv), Errno::inval);
      EXPECT_REJECTED(p->madvise(kA, ~0ull, adv), Errno::inval);
    }
  }
}

TEST_F(BadInput, MadviseUnknownAdvice) {
  // madvise_behavior_valid() is checked first: even a zero length is rejected.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    for (int adv : {5, 6, 7, 999, -1}) {
      SCOPED_TRACE(adv);
      EXPECT_REJECTED(p->madvise(kA, kPage, Advice(adv)), Errno::inval);
      EXPECT_REJECTED(p->madvise(kA, 0, Advice(adv)), Errno::inval);
    }
  }
}

TEST_F(BadInput, MadviseOverHole) {
  // madvise_walk_vmas() / madvise_populate(): no VMA in the range -> ENOMEM, nothing visited.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    for (Advice adv : kAllAdvice) {
      SCOPED_TRACE(static_cast<int>(adv));
      EXPECT_REJECTED(p->madvise(kHole, kPage, adv), Errno::nomem);
      EXPECT_REJECTED(p->madvise(kHole, 16 * kPage, adv), Errno::nomem);
      EXPECT_REJECTED(p->madvise(0x7f0000000000, 4 * kPage, adv), Errno::nomem);
    }
    // madvise_populate() fails at the first address without a VMA, before faulting anything.
    EXPECT_REJECTED(p->madvise(kRo - kPage, 2 * kPage, Advice::populate_read), Errno::nomem);
    EXPECT_REJECTED(p->madvise(kShm - kPage, 3 * kPage, Advice::populate_write), Errno::nomem);
  }
}

TEST_F(BadInput, MadvisePopulateWithoutPermission) {
  // faultin_vma_page_range(): check_vma_flags() fails -> EINVAL (not EFAULT).
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->madvise(kRo, 4 * kPage, Advice::populate_write), Errno::inval);
    EXPECT_REJECTED(p->madvise(kRo + 2 * kPage, kPage, Advice::populate_write), Errno::inval);
    EXPECT_REJECTED(p->madvise(kNone, 4 * kPage, Advice::populate_read), Errno::inval);
    EXPECT_REJECTED(p->madvise(kNone, kPage, Advice::populate_write), Errno::inval);
  }
}

// ---- load / store ----

TEST_F(BadInput, LoadStoreUnaligned) {
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    for (vaddr_t va : {kA + 4, kA + 1, kA + 15 * kPage + 2, kShm + 12, kX + kPage - 4}) {
      SCOPED_TRACE(va);
      EXPECT_REJECTED(p->load(va), Errno::inval);
      EXPECT_REJECTED(p->store(va, 0x1234), Errno::inval);
    }
  }
}

TEST_F(BadInput, LoadStoreOutsideAnyVma) {
  // No VMA: SIGSEGV (bad_area) -> EFAULT.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    for (vaddr_t va :
         {vaddr_t{0}, kHole, kHole + 8, kA + 16 * kPage, kRo - 8, kX - 8, kX + 8 * kPage,
          vaddr_t{0x7f0000000000}, kTaskSize - 8, kTaskSize, vaddr_t{0x800000000000},
          vaddr_t{0xffff800000000000}, vaddr_t{0xffffffff81000000}, vaddr_t{0xfffffffffffffff8}}) {
      SCOPED_TRACE(va);
      EXPECT_REJECTED(p->load(va), Errno::fault);
      EXPECT_REJECTED(p->store(va, 0x1234), Errno::fault);
    }
  }
}

TEST_F(BadInput, LoadStoreForbiddenByVma) {
  // access_error(): PROT_NONE forbids both; a write to a VMA without VM_WRITE is refused.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    for (int i = 0; i < 4; ++i) {
      EXPECT_REJECTED(p->load(kNone + i * kPage), Errno::fault);
      EXPECT_REJECTED(p->store(kNone + i * kPage + 8, 1), Errno::fault);
      EXPECT_REJECTED(p->store(kRo + i * kPage, 1), Errno::fault);  // 0-1 zero page, 2-3 absent
    }
  }
}

// ---- set_cow_pte ----

TEST_F(BadInput, SetCowPteUnknownPolicyOrAlreadyOn) {
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->set_cow_pte(cowpte::CowPtePolicy(7)), Errno::inval);
  }
  // prctl_set_cow_pte: EINVAL once a fork turned MMF_COW_PTE on, under either policy.
  BI_ASSERT_OK(parent_->set_cow_pte());
  auto c = parent_->fork();
  ASSERT_TRUE(c.has_value());
  for (Process* p : {parent_, *c}) {
    EXPECT_REJECTED(p->set_cow_pte(), Errno::inval);
    EXPECT_REJECTED(p->set_cow_pte(cowpte::CowPtePolicy::on_demand_fork), Errno::inval);
  }
}

// ---- pin / unpin ----

TEST_F(BadInput, PinBadArguments) {
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->pin(kA + 0x800, kPage, PinFlags::none), Errno::inval);
    EXPECT_REJECTED(p->pin(kA + 8, kPage, PinFlags::write | PinFlags::longterm), Errno::inval);
    // Bits outside FOLL_WRITE | FOLL_LONGTERM.
    EXPECT_REJECTED(p->pin(kA, kPage, PinFlags(0x4)), Errno::inval);
    EXPECT_REJECTED(p->pin(kA + 8 * kPage, kPage, PinFlags::write | PinFlags(0x100)), Errno::inval);
    EXPECT_REJECTED(p->pin(kA, 2 * kPage, PinFlags::longterm | PinFlags(0x80000000)), Errno::inval);
  }
}

TEST_F(BadInput, PinWithoutAccess) {
  // __get_user_pages(): no VMA -> EFAULT; check_vma_flags() -> EFAULT.
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    for (PinFlags f : {PinFlags::none, PinFlags::longterm, PinFlags::write | PinFlags::longterm}) {
      SCOPED_TRACE(static_cast<unsigned>(f));
      EXPECT_REJECTED(p->pin(kHole, kPage, f), Errno::fault);
      EXPECT_REJECTED(p->pin(kHole, 4 * kPage, f), Errno::fault);
      EXPECT_REJECTED(p->pin(0, kPage, f), Errno::fault);
      EXPECT_REJECTED(p->pin(kTaskSize, kPage, f), Errno::fault);
      EXPECT_REJECTED(p->pin(0x800000000000, kPage, f), Errno::fault);
      EXPECT_REJECTED(p->pin(kNone, kPage, f), Errno::fault);
      EXPECT_REJECTED(p->pin(kNone + kPage, 2 * kPage, f), Errno::fault);
    }
    EXPECT_REJECTED(p->pin(kRo, kPage, PinFlags::write), Errno::fault);
    EXPECT_REJECTED(p->pin(kRo, 4 * kPage, PinFlags::write | PinFlags::longterm), Errno::fault);
  }
}

TEST_F(BadInput, UnpinWithoutPin) {
  for (Process* p : Live()) {
    SCOPED_TRACE(p->pid());
    EXPECT_REJECTED(p->unpin(kA + 5 * kPage, kPage), Errno::inval);   // written, never pinned
    EXPECT_REJECTED(p->unpin(kA + 9 * kPage, kPage), Errno::inval);   // zero page
    EXPECT_REJECTED(p->unpin(kA + 14 * kPage, kPage), Errno::inval);  // absent
    EXPECT_REJECTED(p->unpin(kHole, kPage), Errno::inval);
    EXPECT_REJECTED(p->unpin(kShm, kPage), Errno::inval);
  }
  // A FOLL_GET reference is not a pin.
  EXPECT_REJECTED(parent_->unpin(kA + kPage, kPage), Errno::inval);
  // The child got a copy of the parent's pinned page, not the pin.
  EXPECT_REJECTED(child_->unpin(kA, kPage), Errno::inval);
  EXPECT_REJECTED(child_->unpin(kA + 4 * kPage, kPage), Errno::inval);
}

// ---- an exited process ----

TEST_F(BadInput, EveryCallOnAnExitedProcessIsEsrch) {
  Process& e = *exited_;
  EXPECT_FALSE(e.alive());
  EXPECT_EQ(e.pid(), exited_pid_);
  EXPECT_EQ(m_->find(exited_pid_), nullptr);
  EXPECT_EQ(m_->find(parent_->pid()), parent_);
  EXPECT_EQ(m_->find(child_->pid()), child_);

  EXPECT_REJECTED(e.mmap(0, kPage, kRW, kPriv), Errno::srch);
  EXPECT_REJECTED(e.mmap(kA, kPage, kRW, kFixedPriv), Errno::srch);
  EXPECT_REJECTED(e.munmap(kA, 4 * kPage), Errno::srch);
  EXPECT_REJECTED(e.mprotect(kA, 4 * kPage, Prot::read), Errno::srch);
  for (Advice adv : kAllAdvice) EXPECT_REJECTED(e.madvise(kA, 4 * kPage, adv), Errno::srch);
  EXPECT_REJECTED(e.load(kA), Errno::srch);
  EXPECT_REJECTED(e.store(kA, 7), Errno::srch);
  EXPECT_REJECTED(e.fork(), Errno::srch);
  EXPECT_REJECTED(e.set_cow_pte(), Errno::srch);
  EXPECT_REJECTED(e.pin(kA, kPage, PinFlags::none), Errno::srch);
  EXPECT_REJECTED(e.pin(kA, kPage, PinFlags::write | PinFlags::longterm), Errno::srch);
  EXPECT_REJECTED(e.unpin(kA, kPage), Errno::srch);
  EXPECT_REJECTED(e.gup_get(kA, kPage), Errno::srch);
  EXPECT_REJECTED(e.gup_put(kA, kPage), Errno::srch);
  EXPECT_REJECTED(e.read_gup(kA), Errno::srch);
  EXPECT_REJECTED(e.clear_soft_dirty(), Errno::srch);

  // The windows of an exited process are empty.
  for (vaddr_t va : {kA, kA + kPage, kHole, vaddr_t{0}}) {
    const cowpte::PagemapEntry pm = e.pagemap(va);
    EXPECT_EQ(pm.raw, 0u);
    EXPECT_FALSE(pm.present);
    EXPECT_FALSE(pm.swapped);
    EXPECT_FALSE(pm.file_or_shared_anon);
    EXPECT_FALSE(pm.exclusive);
    EXPECT_FALSE(pm.soft_dirty);
    EXPECT_EQ(pm.pfn, 0u);
  }
  EXPECT_TRUE(e.smaps().empty());
  const cowpte::RssStat zero{0, 0, 0, 0};
  EXPECT_TRUE(e.rss() == zero) << cowpte_test::Describe(e.rss());
  EXPECT_EQ(e.pgtables_bytes(), 0u);
  EXPECT_FALSE(e.alive());
  ExpectUnchanged(base_);

  // Exiting the live processes too: every call on them now answers ESRCH, and nothing is left.
  ASSERT_TRUE(parent_->unpin(kA, kPage).has_value());
  ASSERT_TRUE(parent_->unpin(kA + 4 * kPage, kPage).has_value());
  ASSERT_TRUE(parent_->gup_put(kA + kPage, kPage).has_value());
  const int ppid = parent_->pid();
  const int cpid = child_->pid();
  child_->exit();
  parent_->exit();
  EXPECT_EQ(m_->find(ppid), nullptr);
  EXPECT_EQ(m_->find(cpid), nullptr);
  EXPECT_TRUE(m_->processes().empty());
  EXPECT_EQ(parent_->pid(), ppid);
  EXPECT_FALSE(parent_->alive());
  EXPECT_EQ(ErrName(ErrOf(parent_->load(kA))), "ESRCH");
  EXPECT_EQ(ErrName(ErrOf(child_->store(kA, 1))), "ESRCH");
  EXPECT_EQ(ErrName(ErrOf(child_->fork())), "ESRCH");
  EXPECT_TRUE(parent_->smaps().empty());
  EXPECT_EQ(parent_->pgtables_bytes(), 0u);
  EXPECT_TRUE(InvariantsHold(*m_));
}

TEST_F(BadInput, MappingEndingExactlyAtTaskSizeIsAccepted) {
  // The boundary of the ENOMEM above: addr + len == TASK_SIZE is a valid MAP_FIXED.
  const vaddr_t top = kTaskSize - 4 * kPage;
  auto r = parent_->mmap(top, 4 * kPage, kRW, kFixedPriv);
  ASSERT_TRUE(r.has_value()) << ErrName(ErrOf(r));
  EXPECT_EQ(*r, top);
  EXPECT_TRUE(parent_->store(kTaskSize - 8, 0x70b).has_value());
  auto v = parent_->load(kTaskSize - 8);
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(*v, 0x70bu);
  EXPECT_EQ(ErrName(ErrOf(parent_->load(kTaskSize))), "EFAULT");
  EXPECT_EQ(ErrName(ErrOf(parent_->munmap(top, 4 * kPage))), "success");
  EXPECT_TRUE(InvariantsHold(*m_));
}

}  // namespace
