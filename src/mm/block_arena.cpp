// The host memory behind simulated frames' contents (include/cowpte/model/block_arena.hpp).
#include "cowpte/model/block_arena.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

namespace cowpte {

BlockArena::BlockArena(std::uint64_t max_blocks) {
  // More blocks than the host has memory could never be resident at once: reserve no more
  // address space than that (a simulated machine may be far larger than the host).
  const auto host_pages = std::uint64_t(::sysconf(_SC_PHYS_PAGES));
  const std::uint64_t blocks = std::max<std::uint64_t>(1, std::min(max_blocks, host_pages));
  const std::uint64_t nchunks = (blocks + kBlocksPerChunk - 1) / kBlocksPerChunk;
  reserved_bytes_ = nchunks * kChunk + kChunk;  // room to align the start to 2 MiB
  void* p = ::mmap(nullptr, reserved_bytes_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  reservation_ = static_cast<char*>(p);
  base_ = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(p) + kChunk - 1) &
                                  ~std::uintptr_t(kChunk - 1));
  // Huge pages for the chunks only when asked (COWPTE_HOST_THP=1): measured on this project's
  // machine (a VM, THP "madvise"), three fork-write-exit rounds of 1 GiB took 16-23 s with
  // MADV_HUGEPAGE, almost all of it the host zeroing fresh huge pages, and 2.9 s without.
  if (const char* thp = std::getenv("COWPTE_HOST_THP"); thp && thp[0] == '1')
    ::madvise(base_, nchunks * kChunk, MADV_HUGEPAGE);
  chunks_.resize(nchunks);
}

BlockArena::~BlockArena() { ::munmap(reservation_, reserved_bytes_); }

// Chunks with free blocks come first (most recently freed first), then chunks given back, then
// chunks never used: resident memory is reused before the host has to supply more.
void BlockArena::next_chunk() {
  while (!partial_.empty()) {
    const std::uint32_t i = partial_.back();
    partial_.pop_back();
    Chunk& c = chunks_[i];
    c.listed = false;
    if (i == cur_) continue;
    if (given_back(c)) {
      spare_.push_back(i);
    } else if (c.free || c.bump < kBlocksPerChunk) {
      cur_ = i;
      return;
    }
  }
  while (!spare_.empty()) {
    const std::uint32_t i = spare_.back();
    spare_.pop_back();
    if (i != cur_ && given_back(chunks_[i])) {
      cur_ = i;
      return;
    }
  }
  if (fresh_ == chunks_.size()) throw std::bad_alloc();
  cur_ = fresh_++;
}

void BlockArena::emptied(std::uint32_t i) noexcept {
  --in_use_;
  chunks_[i].kept = true;
  ++kept_;
  if (empty_.size() > 2 * chunks_.size())  // drop the entries of chunks reused since
    std::erase_if(empty_, [this](std::uint32_t j) { return !chunks_[j].kept; });
  empty_.push_back(i);
  while (kept_ > std::max(kKeepEmpty, in_use_) && !empty_.empty()) {
    const std::uint32_t j = empty_.back();
    empty_.pop_back();
    if (chunks_[j].kept) give_back(j);
  }
}

// MADV_DONTNEED: the host frees the chunk and hands out zeroed memory on the next touch.
void BlockArena::give_back(std::uint32_t i) noexcept {
  Chunk& c = chunks_[i];
  ::madvise(block(i, 0), kChunk, MADV_DONTNEED);
  c.free = nullptr;
  c.bump = 0;
  c.kept = false;
  --kept_;
  --resident_;
  ++released_;
}

}  // namespace cowpte
