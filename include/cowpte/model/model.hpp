// The model layer: the types a research extension works with, behind the facade
// (<cowpte/cowpte.hpp>). It is installed, and its parts are:
//   pgtable_types.hpp  x86-64 entry bits, pteval_t, entry helpers (pte_write, pmd_mkwrite, ...)
//   pgtable.hpp        EntryRef, table frames, set_pte_at/set_pmd_at with the lock checks
//   page.hpp           struct page (Page), its flags and counters, PhysMem
//   spinlock.hpp       SpinLock, RwSem, SpinLockRef and SpinGuard, LockTiming
//   mm_types.hpp       Vma, MmStruct, RSS counters, vm_flags, MMF_* bits
//   mmap_lock.hpp      MmapReadGuard, MmapWriteGuard (mmap_read_lock(mm), mmap_write_lock(mm))
//   mmu_gather.hpp     struct mmu_gather (MmGather) of a zap
//   fork_policy.hpp    ForkPolicy, PolicyOps, the registry (register_fork_policy)
//   format.hpp         fmt formatters for entries and struct page
//
// Stability: the facade is stable (rename nothing, docs/facade.md). The model layer follows
// Linux's names and may change as the model grows (swap entries, huge pages, threads add
// fields and hooks); a change that breaks a ForkPolicy built against it is named in the
// release notes of docs/architecture.md. Nothing under src/ is part of either layer.
#pragma once

#include "cowpte/cowpte.hpp"
#include "cowpte/model/fork_policy.hpp"
#include "cowpte/model/format.hpp"
#include "cowpte/model/mm_types.hpp"
#include "cowpte/model/mmap_lock.hpp"
#include "cowpte/model/mmu_gather.hpp"
#include "cowpte/model/page.hpp"
#include "cowpte/model/pgtable.hpp"
#include "cowpte/model/pgtable_types.hpp"
#include "cowpte/model/spinlock.hpp"
