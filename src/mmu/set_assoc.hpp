// A set-associative array with true LRU replacement, the building block of every cache, TLB
// and paging-structure cache of the timing model (ChampSim's lru_table in spirit). Keys are
// 64-bit (a line number, or a PCID-tagged page number); the set is key % sets. The victim is
// the invalid way with the lowest index, else the least recently used one.
//
// The layout is chosen for the simulator's speed (every simulated access looks up a set, and
// most of a timed fork's lookups are misses in the L2 and the LLC). A set of at most 16 ways
// has a 32-byte head: one signature byte per way (a hash of its key), the set's recency order
// and its valid bits. A lookup compares the key's signature with all 16 bytes at once and reads
// a full key only where a signature matched: a miss usually touches the head alone, and the
// heads of the largest array (the LLC's 8,192 sets) take 256 KiB where its keys take 1 MiB.
// The recency order is a permutation of way numbers packed in one 64-bit word, one nibble each,
// most recent first: a hit moves its nibble to the front and the victim is read off the last
// nibble. Every operation on a packed set goes through one set of helpers (access_packed and
// below); a cache access to a set of 8 or 16 ways (the data caches' geometries) instantiates
// them with the way count known when compiled. Wider sets scan their keys and keep a
// timestamp per way. All give exactly the same victims (tests/unit/test_timing.cpp checks them
// against a plain LRU list).
#pragma once

#include <bit>
#include <cassert>
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
      heads_.assign(sets, Head{});
      full_ = std::uint32_t((1ull << ways) - 1);
    } else {
      stamps_.assign(keys_.size(), 0);
    }
  }

  std::uint32_t sets() const noexcept { return sets_; }
  std::uint32_t ways() const noexcept { return ways_; }
  bool empty_geometry() const noexcept { return keys_.empty(); }
  // Whether any way holds a key (a lookup in an empty array is a miss without a look).
  bool any_valid() const noexcept { return valid_ways_ != 0; }

  // Whether key is its set's most recently used way: a hit that changes nothing, so a caller
  // may count it without calling access (the caches' inline fast path).
  bool is_mru(std::uint64_t key) const noexcept { return packed_ && is_mru_packed<0, 0>(key); }
  // is_mru and access for a geometry known when compiled (S sets of N ways, N at most 16; the
  // caller checked has_geometry): the same answers, with the set count, the way count and the
  // dispatch folded into constants (the timing model's default caches).
  bool has_geometry(std::uint32_t sets, std::uint32_t ways) const noexcept {
    return sets_ == sets && ways_ == ways && packed_;
  }
  template <std::uint32_t S, std::uint32_t N>
  bool is_mru_fixed(std::uint64_t key) const noexcept {
    static_assert(N <= kPackedWays && (S & (S - 1)) == 0);
    assert(has_geometry(S, N));
    return is_mru_packed<S, N>(key);
  }
  template <std::uint32_t S, std::uint32_t N>
  [[gnu::always_inline]] bool access_fixed(std::uint64_t key) noexcept {
    static_assert(N <= kPackedWays && (S & (S - 1)) == 0);
    assert(has_geometry(S, N));
    return access_packed<N, S>(key);
  }
  // A hit on key if it is its set's most recent way, or its second most recent (the two swap
  // places, as access would do); false otherwise, with nothing changed. The caches' inline fast
  // path: an access alternating between two lines of a set (a fork's parent and child PTE
  // lines) costs two compares.
  [[gnu::always_inline]] bool hit_recent(std::uint64_t key) noexcept {
    if (!packed_ || ways_ < 2) return false;
    return hit_recent_packed<0, 0>(key);
  }
  // hit_recent for a geometry known when compiled (S sets of N ways; has_geometry checked).
  template <std::uint32_t S, std::uint32_t N>
  [[gnu::always_inline]] bool hit_recent_fixed(std::uint64_t key) noexcept {
    static_assert(N >= 2 && N <= kPackedWays && (S & (S - 1)) == 0);
    assert(has_geometry(S, N));
    return hit_recent_packed<S, N>(key);
  }
  template <std::uint32_t S, std::uint32_t N>
  bool is_mru_packed(std::uint64_t key) const noexcept {
    const std::size_t set = S ? std::size_t(key & (S - 1)) : set_of(key);
    return keys_[set * nways<N>() + (heads_[set].order & 15)] == key;  // an invalid way: kEmpty
  }
  template <std::uint32_t S, std::uint32_t N>
  [[gnu::always_inline]] bool hit_recent_packed(std::uint64_t key) noexcept {
    const std::size_t set = S ? std::size_t(key & (S - 1)) : set_of(key);
    const std::uint64_t* k = &keys_[set * nways<N>()];
    const std::uint64_t order = heads_[set].order;
    if (k[order & 15] == key) return true;  // an invalid way holds kEmpty
    if (k[(order >> 4) & 15] != key) return false;
    heads_[set].order = (order & ~0xffull) | ((order & 15) << 4) | ((order >> 4) & 15);
    return true;
  }
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
    if (w == ways_) return insert_new(set, key, value, evicted);
    touch(set, w);
    if constexpr (kHasPayload) values_[set * ways_ + w] = value;
    return set * ways_ + w;
  }
  // insert_slot of a key the caller just missed in this array (nothing changed it since): the
  // set is not searched again.
  std::size_t insert_absent(std::uint64_t key, const Payload& value = {}) noexcept {
    assert(!peek(key) && "insert_absent of a key the array holds");
    return insert_new(set_of(key), key, value, nullptr);
  }

  // A cache access: true on a hit (now most recently used); on a miss key is filled into the
  // invalid or least recently used way.
  [[gnu::always_inline]] bool access(std::uint64_t key) noexcept {
    if (ways_ == 16) return access_packed<16>(key);
    if (ways_ == 8) return access_packed<8>(key);
    if (packed_) return access_packed<0>(key);
    const std::size_t set = set_of(key);
    const std::uint32_t w = way_of(set, key);
    if (w != ways_) {
      touch(set, w);
      return true;
    }
    wide_fill(set, wide_victim(set), key);
    return false;
  }

  bool invalidate(std::uint64_t key) noexcept {
    if (!valid_ways_) return false;
    const std::size_t set = set_of(key);
    const std::uint32_t w = way_of(set, key);
    if (w == ways_) return false;
    drop(set, w);
    return true;
  }
  template <class Pred>
  void invalidate_if(Pred&& pred) {
    if (!valid_ways_) return;
    for (std::size_t slot = 0; slot < keys_.size(); ++slot) {
      if (keys_[slot] == kEmpty) continue;
      const Way w{keys_[slot], value_at(slot)};
      if (pred(w)) drop(slot / ways_, std::uint32_t(slot % ways_));
    }
  }
  void clear() noexcept {
    for (std::size_t slot = 0; slot < keys_.size() && valid_ways_; ++slot)
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
  static constexpr std::uint32_t kPackedWays = 16;  // nibbles in the order word, signature bytes
  static constexpr std::uint64_t kIdentityOrder = 0xfedcba9876543210ull;
  static constexpr std::uint64_t kNibbleOnes = 0x1111111111111111ull;

  // A packed set's head: what a lookup reads first, in half a host cache line.
  struct alignas(32) Head {
    std::uint8_t sig[kPackedWays] = {};    // per way: signature(key) of a valid way
    std::uint64_t order = kIdentityOrder;  // way numbers, most recent first, a nibble each
    std::uint32_t valid = 0;               // a bit per valid way
  };
  // Eight bits of the key, mixed (Fibonacci hashing): keys of one set differ above the set
  // bits, and a multiply spreads any difference into the top byte.
  static std::uint8_t signature(std::uint64_t key) noexcept {
    return std::uint8_t((key * 0x9e3779b97f4a7c15ull) >> 56);
  }

  std::size_t set_of(std::uint64_t key) const noexcept { return std::size_t(key & (sets_ - 1)); }
  // The way of set holding key, or ways_.
  [[gnu::always_inline]] std::uint32_t way_of(std::size_t set, std::uint64_t key) const noexcept {
    const std::uint64_t* k = &keys_[set * ways_];
    if (packed_) {
      // The valid ways whose signature matches; a full key is read only for those (one, for a
      // hit; none, for a miss but once in 256 per way).
      const Head& h = heads_[set];
      for (std::uint32_t m = sig_matches(h, signature(key)) & h.valid; m; m &= m - 1) {
        const std::uint32_t w = std::uint32_t(std::countr_zero(m));
        if (k[w] == key) return w;
      }
      return ways_;
    }
    std::uint32_t w = 0;
    while (w < ways_ && k[w] != key) ++w;
    return w;
  }
  static std::uint32_t sig_matches(const Head& h, std::uint8_t sig) noexcept {
#if defined(__SSE2__)
    const __m128i v = _mm_load_si128(reinterpret_cast<const __m128i*>(h.sig));
    return std::uint32_t(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(char(sig)))));
#else
    std::uint32_t m = 0;
    for (std::uint32_t i = 0; i < kPackedWays; ++i) m |= std::uint32_t(h.sig[i] == sig) << i;
    return m;
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

  std::size_t insert_new(std::size_t set, std::uint64_t key, const Payload& value,
                         std::optional<std::uint64_t>* evicted) noexcept {
    std::uint32_t w;
    if (packed_) {
      w = fill_missed<0>(heads_[set], &keys_[set * ways_], key, evicted);
    } else {
      w = wide_victim(set);
      if (evicted && keys_[set * ways_ + w] != kEmpty) *evicted = keys_[set * ways_ + w];
      wide_fill(set, w, key);
    }
    if constexpr (kHasPayload) values_[set * ways_ + w] = value;
    return set * ways_ + w;
  }

  // ---- Packed sets. N is the way count when known at compile time (the caches' 8 and 16),
  // 0 when read from ways_; every operation on a packed set goes through these.

  // access for a packed set (S: the set count when known at compile time, else 0).
  template <std::uint32_t N, std::uint32_t S = 0>
  [[gnu::always_inline]] bool access_packed(std::uint64_t key) noexcept {
    const std::size_t set = S ? std::size_t(key & (S - 1)) : set_of(key);
    Head& h = heads_[set];
    std::uint64_t* k = &keys_[set * nways<N>()];
    for (std::uint32_t m = sig_matches(h, signature(key)) & h.valid; m; m &= m - 1) {
      const std::uint32_t w = std::uint32_t(std::countr_zero(m));
      if (k[w] == key) {
        touch_head(h, w);
        return true;
      }
    }
    fill_missed<N>(h, k, key, nullptr);
    return false;
  }
  // The way count, and whether every way is valid, for N or the run-time geometry.
  template <std::uint32_t N>
  std::uint32_t nways() const noexcept {
    return N ? N : ways_;
  }
  template <std::uint32_t N>
  bool is_full(const Head& h) const noexcept {
    return h.valid == (N ? std::uint32_t((1ull << N) - 1) : full_);
  }
  // (The mask tells the compiler what a set not full implies: a way number below 16.)
  static std::uint32_t first_invalid(const Head& h) noexcept {
    return std::uint32_t(std::countr_zero(~h.valid)) & (kPackedWays - 1);
  }
  template <std::uint32_t N>
  std::uint32_t lru_way(const Head& h) const noexcept {
    return std::uint32_t(h.order >> (4 * (nways<N>() - 1))) & 15;
  }
  // Put key in invalid way w, now the most recent (an invalid way may stand anywhere in the
  // order).
  [[gnu::always_inline]] void fill_invalid(Head& h, std::uint64_t* k, std::uint32_t w,
                                           std::uint64_t key) noexcept {
    k[w] = key;
    h.sig[w] = signature(key);
    h.valid |= 1u << w;
    ++valid_ways_;
    touch_head(h, w);
  }
  // Fill key, which the set does not hold: into its invalid way with the lowest index, else in
  // place of the least recent (its key to *evicted, if asked); now the most recent. The way it
  // took.
  template <std::uint32_t N>
  [[gnu::always_inline]] std::uint32_t fill_missed(Head& h, std::uint64_t* k, std::uint64_t key,
                                                   std::optional<std::uint64_t>* evicted) noexcept {
    if (!is_full<N>(h)) {
      const std::uint32_t w = first_invalid(h);
      fill_invalid(h, k, w, key);
      return w;
    }
    const std::uint32_t w = lru_way<N>(h);
    if (evicted) *evicted = k[w];
    k[w] = key;
    h.sig[w] = signature(key);
    move_to_front(h, w, nways<N>() - 1);
    return w;
  }
  // Make way w the most recent.
  [[gnu::always_inline]] static void touch_head(Head& h, std::uint32_t w) noexcept {
    if ((h.order & 15) == w) return;
    move_to_front(h, w, position(h.order, w));
  }
  // w's position in order (0: the most recent): the lowest zero nibble of order ^ w...w (the
  // classic has-zero-byte test on nibbles: exact for the lowest one, and w is there once).
  [[gnu::always_inline]] static unsigned position(std::uint64_t order, std::uint32_t w) noexcept {
    const std::uint64_t x = order ^ (kNibbleOnes * w);
    return unsigned(std::countr_zero((x - kNibbleOnes) & ~x & (kNibbleOnes << 3))) / 4;
  }
  // Move way w, at position pos, to the front; the ways more recent than it move back one.
  [[gnu::always_inline]] static void move_to_front(Head& h, std::uint32_t w,
                                                   unsigned pos) noexcept {
    const std::uint64_t order = h.order;
    const std::uint64_t below = order & ((1ull << (4 * pos)) - 1);       // more recent than w
    const std::uint64_t above = order & ~((2ull << (4 * pos + 3)) - 1);  // less recent
    h.order = above | (below << 4) | w;
  }

  // ---- Any set: packed through the helpers above, wide ones through their stamps.

  // Make way w of set the most recently used.
  [[gnu::always_inline]] void touch(std::size_t set, std::uint32_t w) noexcept {
    if (packed_) return touch_head(heads_[set], w);
    stamps_[set * ways_ + w] = ++clock_;
  }
  // The way a miss in a wide set fills: the first invalid one, else the least recent.
  [[gnu::always_inline]] std::uint32_t wide_victim(std::size_t set) const noexcept {
    const std::uint64_t* s = &stamps_[set * ways_];
    std::uint32_t v = 0;
    for (std::uint32_t w = 1; w < ways_; ++w)
      if (s[w] < s[v]) v = w;  // the first minimum: invalid ways have stamp 0
    return v;
  }
  // Put key in way w of a wide set (wide_victim's answer), now the most recently used.
  [[gnu::always_inline]] void wide_fill(std::size_t set, std::uint32_t w,
                                        std::uint64_t key) noexcept {
    if (keys_[set * ways_ + w] == kEmpty) ++valid_ways_;
    keys_[set * ways_ + w] = key;
    touch(set, w);
  }
  // Invalidate way w; a packed set keeps its place in the order (only valid ways' relative
  // order matters, and a way becomes valid again only through a fill, which makes it the front).
  void drop(std::size_t set, std::uint32_t w) noexcept {
    keys_[set * ways_ + w] = kEmpty;
    --valid_ways_;
    if (packed_) {
      heads_[set].valid &= ~(1u << w);
    } else {
      stamps_[set * ways_ + w] = 0;
    }
  }

  std::uint32_t sets_ = 0, ways_ = 0;
  bool packed_ = true;
  std::uint32_t full_ = 0;             // packed: valid of a set whose ways are all valid
  std::uint64_t valid_ways_ = 0;       // ways holding a key, over every set
  std::vector<std::uint64_t> keys_;    // sets * ways, kEmpty when invalid
  std::vector<Payload> values_;        // sets * ways; empty without a payload
  std::vector<Head> heads_;            // packed: per set
  std::vector<std::uint64_t> stamps_;  // wide sets: per way, the time of last use (0: invalid)
  std::uint64_t clock_ = 0;
  static inline Payload none_{};  // the payload every hit shares when Payload is empty
};

}  // namespace cowpte
