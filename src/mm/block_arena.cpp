// The host memory behind simulated frames' contents (include/cowpte/model/block_arena.hpp).
#include "cowpte/model/block_arena.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

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
  ::madvise(base_, nchunks * kChunk, MADV_HUGEPAGE);  // advice: fine if the host ignores it
  chunks_.resize(nchunks);
}

BlockArena::~BlockArena() { ::munmap(reservation_, reserved_bytes_); }

void BlockArena::next_chunk() {
  while (!partial_.empty()) {
    const std::uint32_t i = partial_.back();
    partial_.pop_back();
    Chunk& c = chunks_[i];
    c.listed = false;
    if (i != cur_ && (c.free || c.bump < kBlocksPerChunk)) {
      cur_ = i;
      return;
    }
  }
  if (fresh_ == chunks_.size()) throw std::bad_alloc();
  cur_ = fresh_++;
}

void BlockArena::emptied(std::uint32_t i) noexcept {
  Chunk& c = chunks_[i];
  if (kept_ < kKeepEmpty) {
    c.kept = true;
    ++kept_;
    return;
  }
  // MADV_DONTNEED: the host frees the chunk and hands out zeroed memory on the next touch.
  ::madvise(block(i, 0), kChunk, MADV_DONTNEED);
  c.free = nullptr;
  c.bump = 0;
  --resident_;
  ++released_;
}

}  // namespace cowpte
