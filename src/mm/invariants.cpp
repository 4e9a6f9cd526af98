// check_invariants(): recount everything from the page tables and compare with what the model
// keeps: each frame's refcount and mapcount, each mm's RSS and pgtables_bytes, the free list,
// table ownership, the anon-exclusive rules, every swap slot's count and cache page, and that
// no lock is left held.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>

#include "facade/access.hpp"
#include "mm/kernel.hpp"

namespace cowpte {

namespace {

class Checker {
 public:
  explicit Checker(const Kernel& k)
      : k_(const_cast<Kernel&>(k)),
        n_(k.mem.watermark()),
        ref_(n_, 0),
        map_(n_, 0),
        table_refs_(n_, 0) {}

  void run() {
    const Pfn zero = k_.mem.pfn(*k_.zero_page);
    ref_[raw(zero)] += 1;  // the zero page's own reference (never freed)
    for (unsigned off = 0; off < PAGE_SIZE; off += 8)
      if (k_.mem.load_word(*k_.zero_page, off))
        fail(fmt::format("the zero page holds data: {:#x} at offset {:#x}",
                         k_.mem.load_word(*k_.zero_page, off), off));
    // Each mm once, in the order of its first live task, named by it; threads share it
    // (mm_users counts them).
    std::vector<std::pair<MmStruct*, int>> mms;  // the mm, its first live task's pid
    std::map<const MmStruct*, int> users;
    for (Process& p : k_.procs)
      if (MmStruct* mm = detail::Access::mm(p))
        if (users[mm]++ == 0) mms.emplace_back(mm, p.pid());
    for (auto [mm, pid] : mms) {
      if (mm->mm_users != users[mm])
        fail(fmt::format("pid {}: mm_users is {}, {} live tasks use the mm", pid, mm->mm_users,
                         users[mm]));
      check_mm(*mm, pid);
    }
    check_shared_tables();
    for (auto [mm, pid] : mms) check_counters(*mm, pid);
    for (ShmemFile* f : files_) count_file(*f);
    k_.gup_refs.for_each([&](int, const GupRef& r) {
      const Page& folio = compound_head(*r.page);
      const std::uint64_t head = raw(k_.mem.pfn(folio));
      if (PageHead(folio)) {
        ref_[head] += 1;
        pins_[head] += r.pin;
      } else {
        ref_[head] += r.pin ? GUP_PIN_COUNTING_BIAS : 1;
      }
    });
    if (k_.huge_zero_page) ref_[raw(k_.mem.pfn(*k_.huge_zero_page))] += 1;  // the kernel's
    check_swap();
    if (huge_zero_pmds_ != k_.huge_zero_pmds || (k_.huge_zero_page && !huge_zero_pmds_))
      fail(fmt::format("{} huge zero PMDs, the kernel counts {}{}", huge_zero_pmds_,
                       k_.huge_zero_pmds, k_.huge_zero_page ? "" : " (no huge zero page)"));
    check_frames();
    if (k_.hw) check_hw();
  }

 private:
  [[noreturn]] void fail(const std::string& what) { throw InvariantViolation(what); }

  void check_vmas(MmStruct& mm, int pid) {
    vaddr_t prev_end = 0;
    for (const Vma& v : mm.mm_mt) {
      if (v.vm_start >= v.vm_end || (v.vm_start & ~PAGE_MASK) || (v.vm_end & ~PAGE_MASK) ||
          v.vm_end > TASK_SIZE || v.vm_start < prev_end)
        fail(fmt::format("pid {}: bad VMA {:#x}-{:#x}", pid, v.vm_start, v.vm_end));
      if (v.vm_mm != &mm)
        fail(fmt::format("pid {}: VMA {:#x} has a foreign vm_mm", pid, v.vm_start));
      // A shared VMA may reach past the end of its file (mremap grew it; those pages SIGBUS):
      // count_file checks that nothing is cached there.
      if (v.vm_file) files_.insert(v.vm_file.get());
      prev_end = v.vm_end;
    }
  }

  // Every table frame is referenced by exactly one entry, but a PTE table shared by COW PTE:
  // one PMD per holder, and its _refcount counts them (checked with every frame's refcount).
  void claim_table(Page& t, const char* level, int pid, bool shareable = false) {
    const std::uint64_t pfn = raw(k_.mem.pfn(t));
    if (pfn >= n_ || !t.test(PG_table))
      fail(
          fmt::format("pid {}: {} entry points at frame {:#x}, not a page table", pid, level, pfn));
    if (++table_refs_[pfn] != 1 && !shareable)
      fail(fmt::format("pid {}: table frame {:#x} referenced by more than one entry", pid, pfn));
    ref_[pfn] += 1;
    if (t.ptl.is_locked()) fail(fmt::format("pid {}: lock of table {:#x} left held", pid, pfn));
  }

  void check_mm(MmStruct& mm, int pid) {
    if (mm.mmap_lock.is_locked() || mm.page_table_lock.is_locked())
      fail(fmt::format("pid {}: mmap_lock or page_table_lock left held", pid));
    check_vmas(mm, pid);
    std::int64_t& tables = expect_[&mm].tables;
    claim_table(*mm.pgd, "mm->pgd", pid);
    pteval_t* pgd = table_base(*mm.pgd);
    for (unsigned i = 0; i < 256; ++i) {  // the user half
      if (pmd_none(pgd[i])) continue;
      check_table_entry(pgd[i], "pgd", pid);
      Page& pudt = k_.table_of(pgd[i]);
      claim_table(pudt, "pgd", pid);
      ++tables;
      for (unsigned j = 0; j < PTRS_PER_TABLE; ++j) {
        const pteval_t pud = table_base(pudt)[j];
        if (pmd_none(pud)) continue;
        check_table_entry(pud, "pud", pid);
        Page& pmdt = k_.table_of(pud);
        claim_table(pmdt, "pud", pid);
        ++tables;
        cur_pmd_table_ = &pmdt;
        for (unsigned l = 0; l < PTRS_PER_TABLE; ++l) {
          const pteval_t pmd = table_base(pmdt)[l];
          if (pmd_none(pmd)) continue;
          const vaddr_t base =
              (vaddr_t(i) << PGDIR_SHIFT) | (vaddr_t(j) << PUD_SHIFT) | (vaddr_t(l) << PMD_SHIFT);
          check_pmd_entry(mm, pmd, base, pid);
        }
        check_deposits(pmdt, pid);
      }
    }
    for (unsigned i = PTRS_PER_TABLE / 2; i < PTRS_PER_TABLE; ++i)  // the kernel half
      if (pgd[i]) fail(fmt::format("pid {}: kernel-half pgd entry {} set", pid, i));
  }

  // A PMD entry and its PTE table. A write-protected PMD (a COW-ed table) exists only in a COW
  // PTE mm. The seed's policy counts a shared table's pages once per holder, as if each had
  // its own table; On-demand-fork counts them once per table and charges the table's RSS and
  // 4 KiB to its owner (check_shared_tables).
  void check_pmd_entry(MmStruct& mm, pteval_t pmd, vaddr_t base, int pid) {
    if (pmd_trans_huge(pmd)) return check_huge_pmd(mm, pmd, base, pid);
    const bool cow = !pmd_write(pmd);
    check_table_entry(pmd | (cow ? _PAGE_RW : 0), "pmd", pid);
    if (cow && !mm_cow_pte(mm))
      fail(fmt::format("pid {}: write-protected PMD at {:#x} in an mm without MMF_COW_PTE", pid,
                       base));
    Page& ptet = k_.table_of(pmd);
    const std::uint64_t pfn = raw(k_.mem.pfn(ptet));
    claim_table(ptet, "pmd", pid, true);
    SharedTable& st = shared_[pfn];
    st.table = &ptet;
    st.holders.push_back(&mm);
    st.writable |= !cow;
    const bool odf = cow && fork_policy(mm).accounting() == TableAccounting::owner;
    (odf ? st.odf : st.seed) = true;
    if (!odf) {
      ++expect_[&mm].tables;
      check_pte_table(mm, ptet, base, expect_[&mm].rss, pid);
    } else if (st.holders.size() == 1) {
      check_pte_table(mm, ptet, base, st.rss, pid);  // once per table
    }
  }

  // A huge PMD: a whole 2 MiB span of one private anonymous VMA, mapping a THP's head (one
  // reference, one entire mapping, 512 pages of RSS; writable only if exclusive) or the huge
  // zero page (read-only, nothing counted); its deposited table counts in pgtables_bytes.
  void check_huge_pmd(MmStruct& mm, pteval_t pmd, vaddr_t base, int pid) {
    if ((pmd & (_PAGE_PRESENT | _PAGE_USER)) != (_PAGE_PRESENT | _PAGE_USER))
      fail(fmt::format("pid {}: huge PMD {:#x} at {:#x} not present or not user", pid, pmd, base));
    const Vma* vma = mm.vma_lookup(base);
    if (!vma || vma->vm_start > base || vma->vm_end < base + PMD_SIZE || vma->vm_file ||
        !vma->anon_vma)
      fail(
          fmt::format("pid {}: huge PMD at {:#x} not inside one private anonymous VMA", pid, base));
    ++expect_[&mm].tables;  // the deposited table
    ++huge_pmds_[cur_pmd_table_];
    const std::uint64_t pfn = raw(pmd_pfn(pmd));
    if ((pfn & (HPAGE_PMD_NR - 1)) || pfn >= n_)
      fail(fmt::format("pid {}: huge PMD at {:#x} maps frame {:#x}", pid, base, pfn));
    Page& head = k_.mem.page(Pfn{pfn});
    if (&head == k_.huge_zero_page) {
      if (pmd_write(pmd)) fail(fmt::format("pid {}: writable huge zero PMD at {:#x}", pid, base));
      ++huge_zero_pmds_;
      return;
    }
    if (!PageHead(head) || !PageAnon(head) || head.test(PG_zero))
      fail(fmt::format("pid {}: huge PMD at {:#x} maps frame {:#x}, not an anon THP", pid, base,
                       pfn));
    const std::uint64_t index = linear_page_index(*vma, base);
    if (head.anon_index != index)
      fail(fmt::format("pid {}: THP at {:#x} has index {}, the VMA says {}", pid, base,
                       head.anon_index, index));
    ref_[pfn] += 1;
    entire_[pfn] += 1;
    expect_[&mm].rss[MM_ANONPAGES] += HPAGE_PMD_NR;
    if (pmd_write(pmd) && !PageAnonExclusive(head))
      fail(fmt::format("pid {}: writable huge PMD at {:#x} maps a non-exclusive THP", pid, base));
  }

  // The tables deposited on a PMD table: one per huge PMD in it, each an empty PTE table.
  void check_deposits(Page& pmdt, int pid) {
    std::uint64_t n = 0;
    for (Page* t = pmdt.pmd_huge_pte; t; t = t->pmd_huge_pte) {
      if (++n > PTRS_PER_TABLE)
        fail(fmt::format("pid {}: deposit list of PMD table {:#x} loops", pid,
                         raw(k_.mem.pfn(pmdt))));
      claim_table(*t, "deposit", pid);
      const pteval_t* e = table_base(*t);
      if (std::any_of(e, e + PTRS_PER_TABLE, [](pteval_t v) { return v != 0; }))
        fail(fmt::format("pid {}: deposited table {:#x} holds entries", pid, raw(k_.mem.pfn(*t))));
    }
    if (n != huge_pmds_[&pmdt])
      fail(fmt::format("pid {}: PMD table {:#x} has {} huge PMDs but {} deposited tables", pid,
                       raw(k_.mem.pfn(pmdt)), huge_pmds_[&pmdt], n));
  }

  void check_shared_tables() {
    for (auto& [pfn, st] : shared_) {
      if (st.odf && st.seed)
        fail(fmt::format("table {:#x}: shared under policies that account it differently", pfn));
      if (st.writable && st.holders.size() > 1)
        fail(fmt::format("table {:#x}: a writable PMD points at a table {} mms share", pfn,
                         st.holders.size()));
      if (!st.odf) continue;
      MmStruct* owner = st.table->pt_owner;
      if (std::find(st.holders.begin(), st.holders.end(), owner) == st.holders.end())
        fail(fmt::format("table {:#x}: shared by On-demand-fork, owner is not a holder", pfn));
      Expect& ex = expect_[owner];
      ++ex.tables;
      for (unsigned c = 0; c < NR_MM_COUNTERS; ++c) ex.rss[c] += st.rss[c];
    }
  }

  void check_counters(MmStruct& mm, int pid) {
    const RssVec& rss = expect_[&mm].rss;
    const std::int64_t tables = expect_[&mm].tables;
    for (unsigned c = 0; c < NR_MM_COUNTERS; ++c)
      if (rss[c] != mm.rss_stat[c])
        fail(fmt::format("pid {}: rss counter {} is {}, the tables map {}", pid, c, mm.rss_stat[c],
                         rss[c]));
    if (tables * std::int64_t(PAGE_SIZE) != mm.pgtables_bytes)
      fail(fmt::format("pid {}: pgtables_bytes {} but {} tables", pid, mm.pgtables_bytes, tables));
  }

  void check_table_entry(pteval_t e, const char* level, int pid) {
    if ((e & ~PTE_PFN_MASK) != _PAGE_TABLE)
      fail(fmt::format("pid {}: {} entry {:#x} has flags other than _PAGE_TABLE", pid, level, e));
    if (!k_.mem.valid(pmd_pfn(e)))
      fail(fmt::format("pid {}: {} entry {:#x} beyond memory", pid, level, e));
  }

  void check_pte_table(MmStruct& mm, Page& t, vaddr_t base, RssVec& rss, int pid) {
    const pteval_t* pte = table_base(t);
    for (unsigned i = 0; i < PTRS_PER_TABLE; ++i) {
      const pteval_t v = pte[i];
      if (pte_none(v)) continue;
      const vaddr_t addr = base | (vaddr_t(i) << PAGE_SHIFT);
      if (!pte_present(v)) {
        check_swap_pte(mm, v, addr, rss, pid);
        continue;
      }
      const Vma* vma = mm.vma_lookup(addr);
      if (!vma) fail(fmt::format("pid {}: PTE {:#x} at {:#x} outside every VMA", pid, v, addr));
      const Pfn pfn = pte_pfn(v);
      if (!k_.mem.valid(pfn) || raw(pfn) >= n_)
        fail(fmt::format("pid {}: PTE at {:#x} maps frame {:#x} beyond memory", pid, addr,
                         raw(pfn)));
      Page& page = k_.mem.page(pfn);
      if (pte_special(v)) {
        if (&page != k_.zero_page)
          fail(fmt::format("pid {}: special PTE at {:#x} not the zero page", pid, addr));
        if (pte_write(v)) fail(fmt::format("pid {}: writable zero page at {:#x}", pid, addr));
        continue;
      }
      if (page.test(PG_table) || page.test(PG_free) || &page == k_.zero_page)
        fail(fmt::format("pid {}: PTE at {:#x} maps frame {:#x} of the wrong kind", pid, addr,
                         raw(pfn)));
      if (page.test(PG_zero))
        fail(fmt::format("pid {}: PTE at {:#x} maps the huge zero page", pid, addr));
      ref_[raw(k_.mem.pfn(compound_head(page)))] += 1;  // the folio's reference
      map_[raw(pfn)] += 1;
      rss[Kernel::mm_counter(page)] += 1;
      check_page_kind(*vma, page, addr, pid);
      if (PageAnon(page) && pte_write(v) && !PageAnonExclusive(page))
        fail(fmt::format("pid {}: writable PTE at {:#x} maps non-exclusive anon frame {:#x}", pid,
                         addr, raw(pfn)));
    }
  }

  // A swap entry: a slot of the device, in a private anonymous VMA; counted once per holder of
  // its table as the policy counts pages.
  void check_swap_pte(MmStruct& mm, pteval_t v, vaddr_t addr, RssVec& rss, int pid) {
    const SwpEntry e = pte_to_swp_entry(v);
    if (!k_.is_device_swp_entry(e))
      fail(fmt::format("pid {}: non-present entry {:#x} at {:#x} is no swap slot", pid, v, addr));
    const Vma* vma = mm.vma_lookup(addr);
    if (!vma || vma->vm_file || !vma->anon_vma)
      fail(fmt::format("pid {}: swap entry at {:#x} outside a private anonymous VMA", pid, addr));
    ++swap_refs_[e.offset];
    if (pte_swp_exclusive(v)) exclusive_swap_.emplace(e.offset, pid);
    rss[MM_SWAPENTS] += 1;
  }

  // Every slot's count is the references found (continuation digits included), its cache bit
  // says whether the swap cache holds a page for it, and the cache's pages are what they say.
  void check_swap() {
    const SwapInfo* si = k_.swap.get();
    if (!si) {
      if (!swap_refs_.empty()) fail("swap entries in the tables, but no swap device");
      return;
    }
    std::uint64_t inuse = 0;
    for (std::uint64_t off = 1; off < si->pages; ++off) {
      const std::uint8_t m = si->swap_map[off];
      auto it = swap_refs_.find(off);
      const std::uint64_t refs = it == swap_refs_.end() ? 0 : it->second;
      if (!m) {
        if (refs) fail(fmt::format("swap slot {}: free but {} PTEs hold it", off, refs));
        if (si->contents.count(off)) fail(fmt::format("swap slot {}: free but holds data", off));
        continue;
      }
      ++inuse;
      const std::uint64_t count = k_.swp_swapcount(SwpEntry{si->type, off});
      if (count != refs)
        fail(fmt::format("swap slot {}: count {} but {} PTEs hold it", off, count, refs));
      if (((m & SWAP_HAS_CACHE) != 0) != (si->lookup(off) != nullptr))
        fail(fmt::format("swap slot {}: SWAP_HAS_CACHE {} but the cache {} a page", off,
                         (m & SWAP_HAS_CACHE) != 0, si->lookup(off) ? "holds" : "has no"));
    }
    if (inuse != si->inuse_pages)
      fail(fmt::format("swap: {} slots in use, inuse_pages says {}", inuse, si->inuse_pages));
    for (const auto& [off, pid] : exclusive_swap_)
      if (swap_refs_[off] != 1)
        fail(fmt::format("pid {}: exclusive swap entry of slot {} that {} PTEs hold", pid, off,
                         swap_refs_[off]));
    for (const auto& [off, page] : si->cache) {
      const std::uint64_t pfn = raw(k_.mem.pfn(*page));
      if (pfn >= n_ || page->test(PG_free) || !PageSwapCache(*page) || page->swap_offset != off)
        fail(fmt::format("swap cache slot {}: frame {:#x} is not its page", off, pfn));
      if (PageAnonExclusive(*page) && swap_refs_.count(off))
        fail(fmt::format("swap cache slot {}: an exclusive page that swap PTEs still refer to",
                         off));
      ref_[pfn] += 1;  // the cache's reference
    }
    for (const auto& [idx, list] : si->continuations)
      for (const Page* cont : list) ref_[raw(k_.mem.pfn(*cont))] += 1;
  }

  void check_page_kind(const Vma& vma, const Page& page, vaddr_t addr, int pid) {
    if (PageCompound(page) && page.anon_index != linear_page_index(vma, addr))
      fail(fmt::format("pid {}: THP subpage at {:#x} has index {}, the VMA says {}", pid, addr,
                       page.anon_index, linear_page_index(vma, addr)));
    if (vma.vm_file) {
      const std::uint64_t index = vma.vm_pgoff + ((addr - vma.vm_start) >> PAGE_SHIFT);
      if (PageAnon(page) || page.mapping != vma.vm_file.get() || page.index != index ||
          vma.vm_file->lookup(index) != &page)
        fail(fmt::format("pid {}: shmem PTE at {:#x} maps a page not cached at index {}", pid, addr,
                         index));
    } else {
      if (!PageAnon(page))
        fail(fmt::format("pid {}: private anonymous PTE at {:#x} maps a non-anon page", pid, addr));
      if (!vma.anon_vma)
        fail(fmt::format("pid {}: anon page at {:#x} in a VMA without anon_vma", pid, addr));
    }
  }

  void count_file(ShmemFile& f) {
    for (const auto& [i, p] : f.cache) {
      if (!p || i >= f.size)
        fail(fmt::format("shmem page cache index {} is empty or past the end", i));
      if (p->mapping != &f || p->index != i || PageAnon(*p))
        fail(fmt::format("shmem page cache index {} holds a page that is not its own", i));
      ref_[raw(k_.mem.pfn(*p))] += 1;
    }
  }

  void check_frames() {
    std::uint64_t free_seen = 0, tables_seen = 0;
    for (std::uint64_t pfn = 0; pfn < n_; ++pfn) {
      const Page& p = k_.mem.page(Pfn{pfn});
      tables_seen += p.test(PG_table);
      if (p.test(PG_free)) {
        ++free_seen;
        if (p.flags != PG_free || p._refcount || p._mapcount != -1 || p.data)
          fail(fmt::format("frame {:#x}: free but not clean", pfn));
        if (ref_[pfn] || map_[pfn])
          fail(fmt::format("frame {:#x}: free but still mapped or referenced", pfn));
        continue;
      }
      if (PageCompound(p)) {
        check_compound_frame(p, pfn);
        continue;
      }
      if (p._refcount != ref_[pfn])
        fail(fmt::format("frame {:#x}: refcount {} but {} holders found{}", pfn, p._refcount,
                         ref_[pfn], ref_[pfn] == 0 ? " (leaked)" : ""));
      if (page_mapcount(p) != map_[pfn])
        fail(fmt::format("frame {:#x}: mapcount {} but {} mappings found", pfn, page_mapcount(p),
                         map_[pfn]));
      if (p.test(PG_swapcache) && (!k_.swap || k_.swap->lookup(p.swap_offset) != &p))
        fail(fmt::format("frame {:#x}: PG_swapcache but not in the swap cache", pfn));
      if (PageAnonExclusive(p) && page_mapcount(p) > 1)
        fail(fmt::format("frame {:#x}: anon-exclusive but mapped {} times", pfn, page_mapcount(p)));
    }
    if (free_seen + (k_.mem.total_pages() - n_) != k_.mem.free_pages())
      fail(fmt::format("free list holds {} frames but {} are marked free",
                       k_.mem.free_pages() - (k_.mem.total_pages() - n_), free_seen));
    if (tables_seen != k_.mem.table_frames())
      fail(fmt::format("{} frames are tables but PageTables counts {}", tables_seen,
                       k_.mem.table_frames()));
  }

  // A frame of a THP: tails point at a head 511 frames away at most; the head's refcount,
  // entire mapcount and pin count are what was found; each subpage's mapcount is its PTE
  // mappings plus the entire ones.
  void check_compound_frame(const Page& p, std::uint64_t pfn) {
    const std::uint64_t head = pfn & ~std::uint64_t(HPAGE_PMD_NR - 1);
    const Page& h = k_.mem.page(Pfn{head});
    if ((PageHead(p) != (pfn == head)) || (PageTail(p) && p.index != pfn - head) || !PageHead(h))
      fail(fmt::format("frame {:#x}: compound page structure broken", pfn));
    const bool zero = h.test(PG_zero);  // the huge zero page, or one a GUP reference outlived
    if (PageAnon(p) == zero)
      fail(fmt::format("frame {:#x}: a THP subpage that is {}", pfn, zero ? "anon" : "not anon"));
    if (PageSwapCache(p)) fail(fmt::format("frame {:#x}: a THP in the swap cache", pfn));
    if (pfn == head) {
      if (p._refcount != ref_[pfn])
        fail(fmt::format("THP {:#x}: refcount {} but {} holders found{}", pfn, p._refcount,
                         ref_[pfn], ref_[pfn] == 0 ? " (leaked)" : ""));
      if (folio_entire_mapcount(p) != entire_[pfn])
        fail(fmt::format("THP {:#x}: entire mapcount {} but {} huge PMDs map it", pfn,
                         folio_entire_mapcount(p), entire_[pfn]));
      if (compound_pincount(p) != pins_[pfn])
        fail(fmt::format("THP {:#x}: pincount {} but {} pins found", pfn, compound_pincount(p),
                         pins_[pfn]));
    }
    if (page_mapcount(p) != map_[pfn] + entire_[head])
      fail(fmt::format("frame {:#x}: mapcount {} but {} PTEs and {} huge PMDs map it", pfn,
                       page_mapcount(p), map_[pfn], entire_[head]));
    if (PageAnonExclusive(p) && page_mapcount(p) > 1)
      fail(fmt::format("frame {:#x}: anon-exclusive but mapped {} times", pfn, page_mapcount(p)));
  }

  struct Expect {  // what an mm's counters must say
    RssVec rss{};
    std::int64_t tables = 0;
  };
  struct SharedTable {  // the PMDs that point at one PTE table
    Page* table = nullptr;
    std::vector<MmStruct*> holders;
    bool writable = false, seed = false, odf = false;
    RssVec rss{};  // On-demand-fork: the table's pages, counted once
  };

  // The timing model's TLBs and paging-structure caches never know more than the tables: every
  // cached translation belongs to a live process, maps the frame the PTE maps, is writable
  // only if every level is, and claims D only if the PTE has it; every cached structure entry
  // points at the table its entry points at. A kernel path that changes an entry without the
  // flush Linux does leaves an entry that breaks this.
  void check_hw() {
    std::map<unsigned, MmStruct*> by_pcid;
    for (Process& p : k_.procs)
      if (MmStruct* mm = detail::Access::mm(p))
        if (auto [it, added] = by_pcid.emplace(mm->pcid, mm); !added && it->second != mm)
          fail(fmt::format("pid {}: PCID {} is another live mm's too", p.pid(), mm->pcid));
    const std::uint64_t vpn_mask = (1ull << 36) - 1;
    for (std::size_t c = 0; c < k_.hw->cpus.size(); ++c) {
      const Cpu& cpu = k_.hw->cpus[c];
      auto check_tlb = [&](const SetAssoc<TlbEntry>::Way& w, const char* which) {
        const vaddr_t va = (w.key & vpn_mask) << PAGE_SHIFT;
        auto it = by_pcid.find(unsigned(w.key >> 36));
        if (it == by_pcid.end())
          fail(fmt::format("CPU {}: {} entry {:#x} of PCID {} that no live process has", c, which,
                           va, w.key >> 36));
        const pteval_t* e = walk(*it->second, va, 4);
        if (!e || !pte_present(e[3]) || raw(pte_pfn(e[3])) != w.value.pfn)
          fail(fmt::format("CPU {}: stale {} entry for {:#x} (pid {}): maps frame {:#x}", c, which,
                           va, it->second->pid, w.value.pfn));
        if (w.value.writable && !((e[0] & e[1] & e[2] & e[3]) & _PAGE_RW))
          fail(fmt::format("CPU {}: {} entry for {:#x} (pid {}) writable, the tables are not", c,
                           which, va, it->second->pid));
        if (w.value.dirty && !(e[3] & _PAGE_DIRTY))
          fail(fmt::format("CPU {}: {} entry for {:#x} (pid {}) dirty, the PTE is clean", c, which,
                           va, it->second->pid));
      };
      // A 2 MiB entry: the PMD is a present huge leaf of that frame, with the rights cached.
      auto check_tlb_2m = [&](std::uint64_t key, const TlbEntry& t, const char* which) {
        const vaddr_t va = (key & vpn_mask & ~kStlbHuge) << PMD_SHIFT;
        auto it = by_pcid.find(unsigned(key >> 36));
        const pteval_t* e = it == by_pcid.end() ? nullptr : walk(*it->second, va, 3);
        if (!e || !(e[2] & _PAGE_PSE) || raw(pmd_pfn(e[2])) != t.pfn)
          fail(fmt::format("CPU {}: stale {} 2 MiB entry for {:#x}", c, which, va));
        if (t.writable && !((e[0] & e[1] & e[2]) & _PAGE_RW))
          fail(fmt::format("CPU {}: {} 2 MiB entry for {:#x} writable, the tables are not", c,
                           which, va));
        if (t.dirty && !(e[2] & _PAGE_DIRTY))
          fail(fmt::format("CPU {}: {} 2 MiB entry for {:#x} dirty, the PMD is clean", c, which,
                           va));
      };
      cpu.dtlb_4k.for_each_valid([&](const auto& w) { check_tlb(w, "DTLB"); });
      cpu.dtlb_2m.for_each_valid([&](const auto& w) { check_tlb_2m(w.key, w.value, "DTLB"); });
      cpu.stlb.for_each_valid([&](const auto& w) {
        if (w.key & kStlbHuge) return check_tlb_2m(w.key, w.value, "STLB");
        check_tlb(w, "STLB");
      });
      cpu.dtlb_1g.for_each_valid(
          [&](const auto&) { fail(fmt::format("CPU {}: a 1 GiB TLB entry, no 1 GiB page", c)); });
      auto check_pwc = [&](const SetAssoc<PwcEntry>& pwc, unsigned shift, unsigned level) {
        pwc.for_each_valid([&](const auto& w) {
          const vaddr_t va = (w.key & vpn_mask) << shift;
          auto it = by_pcid.find(unsigned(w.key >> 36));
          const pteval_t* e = it == by_pcid.end() ? nullptr : walk(*it->second, va, level + 1);
          if (!e || raw(pmd_pfn(e[level])) != w.value.table)
            fail(fmt::format("CPU {}: stale paging-structure cache entry (level {}) for {:#x}", c,
                             level, va));
        });
      };
      check_pwc(cpu.pml4e, PGDIR_SHIFT, 0);
      check_pwc(cpu.pdpte, PUD_SHIFT, 1);
      check_pwc(cpu.pde, PMD_SHIFT, 2);
    }
  }
  // The entries of the walk to va, levels deep; nullptr where a level is not present.
  const pteval_t* walk(MmStruct& mm, vaddr_t va, unsigned levels) {
    const unsigned idx[4] = {pgd_index(va), pud_index(va), pmd_index(va), pte_index(va)};
    Page* t = mm.pgd;
    for (unsigned l = 0; l < levels; ++l) {
      walk_[l] = table_base(*t)[idx[l]];
      if (!(walk_[l] & _PAGE_PRESENT)) return nullptr;
      if (l + 1 < levels && l > 0 && (walk_[l] & _PAGE_PSE)) return nullptr;  // a huge leaf
      if (l + 1 < levels) t = &k_.table_of(walk_[l]);
    }
    return walk_;
  }

  Kernel& k_;
  pteval_t walk_[4] = {};
  std::map<const MmStruct*, Expect> expect_;
  std::map<std::uint64_t, SharedTable> shared_;
  std::uint64_t n_;
  std::vector<std::int64_t> ref_, map_;
  std::map<std::uint64_t, std::int64_t> entire_, pins_;  // per THP head
  std::map<const Page*, std::uint64_t> huge_pmds_;       // per PMD table
  Page* cur_pmd_table_ = nullptr;
  std::uint64_t huge_zero_pmds_ = 0;
  std::vector<std::uint32_t> table_refs_;
  std::set<ShmemFile*> files_;
  std::map<std::uint64_t, std::uint64_t> swap_refs_;  // slot -> swap PTEs found
  std::multimap<std::uint64_t, int> exclusive_swap_;  // slots of exclusive swap PTEs
};

}  // namespace

void Kernel::check_invariants() const { Checker(*this).run(); }

}  // namespace cowpte
