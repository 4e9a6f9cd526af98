// A set-associative array with true LRU replacement, the building block of every cache, TLB
// and paging-structure cache of the timing model (ChampSim's lru_table in spirit). Keys are
// 64-bit (a line number, or a PCID-tagged page number); the set is key % sets. The victim is
// the invalid way with the lowest index, else the least recently used one.
//
// The layout is chosen for the simulator's speed (every simulated access scans a set): the keys
// of a set are contiguous, an invalid way holds the key kEmpty (so a hit is one comparison per
// way), and payloads live apart. The recency order of a set of at most 16 ways is a permutation
// of way numbers packed in one 64-bit word, one nibble each, most recent first: a hit moves its
// nibble to the front and the victim is read off the last nibble, instead of scanning
// per-way timestamps. Wider sets keep a timestamp per way. Both give exactly the same victims.
#pragma once

#include <bit>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace cowpte {

struct NoPayload {};

template <class Payload = NoPayload>
class SetAssoc {
 public:
  // The key of an invalid way: no real key is all ones (line numbers have at most 58 bits,
  // TLB and PWC keys 48).
  static constexpr std::uint64_t kEmpty = ~0ull;
  static constexpr std::size_t npos = ~std::size_t(0);
  // A valid way, as for_each_valid and invalidate_if show it.
  struct Way {
    std::uint64_t key;
    Payload value;
  };

  SetAssoc() = default;
  SetAssoc(std::uint32_t sets, std::uint32_t ways)
      : sets_(sets), ways_(ways), packed_(ways <= kPackedWays) {
    if (!sets || !ways || (sets & (sets - 1)))
      throw std::invalid_argument("SetAssoc: sets must be a power of two, ways at least 1");
    keys_.assign(std::size_t(sets) * ways, kEmpty);
    if constexpr (kHasPayload) values_.resize(keys_.size());
    if (packed_) {
      order_.assign(sets, kIdentityOrder);
      valid_.assign(sets, 0);
      full_ = std::uint32_t((1ull << ways) - 1);
    } else {
      stamps_.assign(keys_.size(), 0);
    }
  }

  std::uint32_t sets() const noexcept { return sets_; }
  std::uint32_t ways() const noexcept { return ways_; }
  bool empty_geometry() const noexcept { return keys_.empty(); }

  // The slot (set * ways + way) holding key, marked most recently used; npos on a miss.
  std::size_t find(std::uint64_t key) noexcept {
    const std::size_t set = set_of(key);
    const std::uint32_t w = way_of(set, key);
    if (w == ways_) return npos;
    touch(set, w);
    return set * ways_ + w;
  }
  // The payload of key's way, marked most recently used; nullptr on a miss.
  Payload* lookup(std::uint64_t key) noexcept {
    const std::size_t slot = find(key);
    return slot == npos ? nullptr : value_ptr(slot);
  }
  // Lookup without touching the LRU state (for checks and tests).
  const Payload* peek(std::uint64_t key) const noexcept {
    const std::size_t set = set_of(key);
    const std::uint32_t w = way_of(set, key);
    return w == ways_ ? nullptr : value_ptr(set * ways_ + w);
  }
  // A slot find() returned: its key (kEmpty once invalidated) and payload.
  std::uint64_t key_at(std::size_t slot) const noexcept { return keys_[slot]; }
  const Payload& value_at(std::size_t slot) const noexcept { return *value_ptr(slot); }

  // Insert (or refresh) key; returns the key it evicted, if a valid one was.
  std::optional<std::uint64_t> insert(std::uint64_t key, const Payload& value = {}) noexcept {
    std::optional<std::uint64_t> evicted;
    insert_slot(key, value, &evicted);
    return evicted;
  }
  // insert, returning the slot key now occupies (find's answer, without a second scan).
  std::size_t insert_slot(std::uint64_t key, const Payload& value = {},
                          std::optional<std::uint64_t>* evicted = nullptr) noexcept {
    const std::size_t set = set_of(key);
    std::uint32_t w = way_of(set, key);
    if (w == ways_) {
      w = victim(set);
      if (evicted && keys_[set * ways_ + w] != kEmpty) *evicted = keys_[set * ways_ + w];
      fill(set, w, key);
    } else {
      touch(set, w);
    }
    if constexpr (kHasPayload) values_[set * ways_ + w] = value;
    return set * ways_ + w;
  }

  // A cache access: true on a hit (now most recently used); on a miss key is filled into the
  // invalid or least recently used way.
  bool access(std::uint64_t key) noexcept {
    const std::size_t set = set_of(key);
    const std::uint32_t w = way_of(set, key);
    if (w != ways_) {
      touch(set, w);
      return true;
    }
    fill(set, victim(set), key);
    return false;
  }

  bool invalidate(std::uint64_t key) noexcept {
    const std::size_t set = set_of(key);
    const std::uint32_t w = way_of(set, key);
    if (w == ways_) return false;
    drop(set, w);
    return true;
  }
  template <class Pred>
  void invalidate_if(Pred&& pred) {
    for (std::size_t slot = 0; slot < keys_.size(); ++slot) {
      if (keys_[slot] == kEmpty) continue;
      const Way w{keys_[slot], value_at(slot)};
      if (pred(w)) drop(slot / ways_, std::uint32_t(slot % ways_));
    }
  }
  void clear() noexcept {
    for (std::size_t slot = 0; slot < keys_.size(); ++slot)
      if (keys_[slot] != kEmpty) drop(slot / ways_, std::uint32_t(slot % ways_));
  }
  template <class F>
  void for_each_valid(F&& f) const {
    for (std::size_t slot = 0; slot < keys_.size(); ++slot) {
      if (keys_[slot] == kEmpty) continue;
      const Way w{keys_[slot], value_at(slot)};
      f(w);
    }
  }

 private:
  static constexpr bool kHasPayload = !std::is_empty_v<Payload>;
  static constexpr std::uint32_t kPackedWays = 16;  // nibbles in the 64-bit order word
  static constexpr std::uint64_t kIdentityOrder = 0xfedcba9876543210ull;
  static constexpr std::uint64_t kNibbleOnes = 0x1111111111111111ull;

  std::size_t set_of(std::uint64_t key) const noexcept { return std::size_t(key & (sets_ - 1)); }
  // The way of set holding key, or ways_. A packed set tries its most recent way first: a
  // line hit again soon (a table line between struct page touches) is found in one compare.
  std::uint32_t way_of(std::size_t set, std::uint64_t key) const noexcept {
    const std::uint64_t* k = &keys_[set * ways_];
    if (packed_) {
      const std::uint32_t mru = std::uint32_t(order_[set] & 15);
      if (k[mru] == key) return mru;
    }
    // The common geometries compare every way without a branch (SSE2 where there is); the
    // keys of a set are unique, so the lowest match is the match.
    if (ways_ == 16) return first_match<16>(k, key);
    if (ways_ == 12) return first_match<12>(k, key);
    if (ways_ == 8) return first_match<8>(k, key);
    if (ways_ == 4) return first_match<4>(k, key);
    std::uint32_t w = 0;
    while (w < ways_ && k[w] != key) ++w;
    return w;
  }
  template <std::uint32_t N>
  static std::uint32_t first_match(const std::uint64_t* k, std::uint64_t key) noexcept {
    static_assert(N % 4 == 0 && N <= 16);
#if defined(__SSE2__)
    // SSE2 has no 64-bit compare (pcmpeqq is SSE4.1): compare 32-bit halves, narrow the
    // results to one byte per half, and a key matches where both of its halves do. Two
    // compares per four ways and one movemask per eight, where the scalar loop spends four
    // instructions per way (the miss path scans an 8- and a 16-way set per new line, a TLB miss
    // the 12-way STLB).
    const __m128i kk = _mm_set1_epi64x(static_cast<long long>(key));
    auto eq = [&](std::uint32_t i) {
      return _mm_cmpeq_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k + i)), kk);
    };
    std::uint32_t m = 0;
    std::uint32_t i = 0;
    for (; i + 8 <= N; i += 8) {
      const __m128i bytes =
          _mm_packs_epi16(_mm_packs_epi32(eq(i), eq(i + 2)), _mm_packs_epi32(eq(i + 4), eq(i + 6)));
      m |= std::uint32_t(_mm_movemask_epi8(bytes)) << (2 * i);  // bits 2w, 2w+1: way w's halves
    }
    if (i < N) {  // four ways left
      const __m128i bytes = _mm_packs_epi16(_mm_packs_epi32(eq(i), eq(i + 2)), _mm_setzero_si128());
      m |= (std::uint32_t(_mm_movemask_epi8(bytes)) & 0xff) << (2 * i);
    }
    m &= (m >> 1) & 0x55555555u;
    return m ? std::uint32_t(std::countr_zero(m)) / 2 : N;
#else
    std::uint32_t m = 0;
    for (std::uint32_t i = 0; i < N; ++i) m |= std::uint32_t(k[i] == key) << i;
    return m ? std::uint32_t(std::countr_zero(m)) : N;
#endif
  }
  Payload* value_ptr(std::size_t slot) noexcept {
    if constexpr (kHasPayload) return &values_[slot];
    return &none_;
  }
  const Payload* value_ptr(std::size_t slot) const noexcept {
    if constexpr (kHasPayload) return &values_[slot];
    return &none_;
  }

  // Make way w of set the most recently used.
  void touch(std::size_t set, std::uint32_t w) noexcept {
    if (!packed_) {
      stamps_[set * ways_ + w] = ++clock_;
      return;
    }
    const std::uint64_t order = order_[set];
    if ((order & 15) == w) return;   // already the most recent
    if (((order >> 4) & 15) == w) {  // the second most recent: swap the two
      order_[set] = (order & ~0xffull) | ((order & 15) << 4) | w;
      return;
    }
    // w's position: the lowest zero nibble of order ^ w... (the classic has-zero-byte test on
    // nibbles: exact for the lowest one, and w is there exactly once).
    const std::uint64_t x = order ^ (kNibbleOnes * w);
    const unsigned pos =
        unsigned(std::countr_zero((x - kNibbleOnes) & ~x & (kNibbleOnes << 3))) / 4;
    move_to_front(set, w, pos);
  }
  void move_to_front(std::size_t set, std::uint32_t w, unsigned pos) noexcept {
    const std::uint64_t order = order_[set];
    const std::uint64_t below = order & ((1ull << (4 * pos)) - 1);       // more recent than w
    const std::uint64_t above = order & ~((2ull << (4 * pos + 3)) - 1);  // less recent
    order_[set] = above | (below << 4) | w;
  }
  // The way a miss in set fills: the invalid way with the lowest index, else the LRU one.
  std::uint32_t victim(std::size_t set) const noexcept {
    if (!packed_) {
      const std::uint64_t* s = &stamps_[set * ways_];
      std::uint32_t v = 0;
      for (std::uint32_t w = 1; w < ways_; ++w)
        if (s[w] < s[v]) v = w;  // the first minimum: invalid ways have stamp 0
      return v;
    }
    if (valid_[set] != full_) return std::uint32_t(std::countr_zero(~valid_[set]));
    return std::uint32_t(order_[set] >> (4 * (ways_ - 1))) & 15;
  }
  void fill(std::size_t set, std::uint32_t w, std::uint64_t key) noexcept {
    keys_[set * ways_ + w] = key;
    if (!packed_ || valid_[set] != full_) {
      if (packed_) valid_[set] |= 1u << w;
      touch(set, w);
      return;
    }
    move_to_front(set, w, ways_ - 1);  // a full packed set evicts its last way
  }
  // Invalidate way w; a packed set keeps its place in the order (only valid ways' relative
  // order matters, and a way becomes valid again only through fill, which makes it the front).
  void drop(std::size_t set, std::uint32_t w) noexcept {
    keys_[set * ways_ + w] = kEmpty;
    if (packed_) {
      valid_[set] &= ~(1u << w);
    } else {
      stamps_[set * ways_ + w] = 0;
    }
  }

  std::uint32_t sets_ = 0, ways_ = 0;
  bool packed_ = true;
  std::uint32_t full_ = 0;             // packed: valid_ of a set whose ways are all valid
  std::vector<std::uint64_t> keys_;    // sets * ways, kEmpty when invalid
  std::vector<Payload> values_;        // sets * ways; empty without a payload
  std::vector<std::uint64_t> order_;   // packed: per set, way numbers most recent first
  std::vector<std::uint32_t> valid_;   // packed: per set, a bit per valid way
  std::vector<std::uint64_t> stamps_;  // wide sets: per way, the time of last use (0: invalid)
  std::uint64_t clock_ = 0;
  static inline Payload none_{};  // the payload every hit shares when Payload is empty
};

}  // namespace cowpte
