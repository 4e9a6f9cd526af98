// Host memory for the contents of simulated frames: 4 KiB blocks carved from 2 MiB chunks of
// one address range reserved per PhysMem (MAP_NORESERVE; with COWPTE_HOST_THP=1 in the
// environment also MADV_HUGEPAGE, so that the host can back each chunk with one huge page,
// which on a virtual machine can be much slower: see block_arena.cpp). This is the simulator's
// own allocator, not a model of a kernel one; it replaces boost::pool, which wrote a free-list
// link into every block of each new chunk, grew in doubling chunks and never gave memory back.
// Here:
//   - a chunk costs nothing until a block of it is first handed out, and blocks handed out for
//     the first time since the chunk was fresh come from the host already zeroed (no memset);
//   - a freed block goes on its chunk's own free list (the link lives in the freed block);
//   - a chunk whose last block is freed is kept for reuse while there are no more empty chunks
//     than chunks in use (and at least kKeepEmpty); beyond that, empty chunks go back to the
//     host (MADV_DONTNEED), so memory falls back after a process exits. Giving a chunk back and
//     touching it again makes the host zero 2 MiB (and, in a virtual machine, often back it
//     anew): a fork-exit loop that frees half its blocks at each exit must not pay that.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace cowpte {

class BlockArena {
 public:
  static constexpr std::size_t kBlock = 4096, kChunk = 2u << 20, kBlocksPerChunk = kChunk / kBlock;
  // Empty chunks kept resident for reuse however few chunks are in use (16 MiB).
  static constexpr std::uint32_t kKeepEmpty = 8;

  // Reserves room for max_blocks blocks (at most one per simulated frame).
  explicit BlockArena(std::uint64_t max_blocks);
  ~BlockArena();
  BlockArena(const BlockArena&) = delete;
  BlockArena& operator=(const BlockArena&) = delete;

  // A block; *zeroed tells whether it is known to hold zeros. Throws std::bad_alloc when the
  // reservation is used up.
  void* allocate(bool* zeroed) {
    for (;;) {
      if (cur_ != kNone) {
        Chunk& c = chunks_[cur_];
        if (c.free) {
          FreeBlock* b = c.free;
          c.free = b->next;
          take(c);
          *zeroed = false;
          return b;
        }
        if (c.bump < kBlocksPerChunk) {
          void* b = block(cur_, c.bump++);
          take(c);
          *zeroed = true;
          return b;
        }
      }
      next_chunk();
    }
  }

  void free(void* p) noexcept {
    const std::uint32_t i = chunk_of(p);
    Chunk& c = chunks_[i];
    auto* b = static_cast<FreeBlock*>(p);
    b->next = c.free;
    c.free = b;
    if (!c.listed && i != cur_) {
      c.listed = true;
      partial_.push_back(i);
    }
    if (--c.live == 0) emptied(i);
  }

  // Chunks holding host memory now (touched since fresh), and chunks given back so far.
  std::uint64_t resident_chunks() const noexcept { return resident_; }
  std::uint64_t released_chunks() const noexcept { return released_; }

 private:
  struct FreeBlock {
    FreeBlock* next;
  };
  struct Chunk {
    FreeBlock* free = nullptr;  // freed blocks
    std::uint32_t bump = 0;     // blocks handed out since the chunk was fresh
    std::uint32_t live = 0;     // blocks in use
    bool listed = false;        // on partial_
    bool kept = false;          // empty and counted in kept_
  };
  static constexpr std::uint32_t kNone = ~0u;

  void* block(std::uint32_t chunk, std::uint32_t i) const noexcept {
    return base_ + std::size_t(chunk) * kChunk + std::size_t(i) * kBlock;
  }
  std::uint32_t chunk_of(const void* p) const noexcept {
    return std::uint32_t(std::size_t(static_cast<const char*>(p) - base_) / kChunk);
  }
  void take(Chunk& c) noexcept {
    if (c.live++ == 0) {
      ++in_use_;
      if (c.kept) --kept_, c.kept = false;
      if (!c.free && c.bump == 1) ++resident_;  // the first block since fresh
    }
  }
  bool given_back(const Chunk& c) const noexcept { return !c.free && c.bump == 0; }
  void next_chunk();                       // the next chunk to allocate from (cur_)
  void emptied(std::uint32_t i) noexcept;  // keep the empty chunk; give back the surplus
  void give_back(std::uint32_t i) noexcept;

  char* reservation_ = nullptr;  // what mmap returned
  std::size_t reserved_bytes_ = 0;
  char* base_ = nullptr;  // 2 MiB-aligned start of chunk 0
  std::vector<Chunk> chunks_;
  std::vector<std::uint32_t> partial_;  // chunks that had a block freed while not current
  std::vector<std::uint32_t> spare_;    // given-back chunks, used before fresh ones
  std::vector<std::uint32_t> empty_;    // kept chunks (stale entries skipped)
  std::uint32_t cur_ = kNone;           // the chunk allocations come from
  std::uint32_t fresh_ = 0;             // chunks below this one have been used
  std::uint32_t kept_ = 0;              // empty chunks kept resident
  std::uint32_t in_use_ = 0;            // chunks with a live block
  std::uint64_t resident_ = 0, released_ = 0;
};

}  // namespace cowpte
