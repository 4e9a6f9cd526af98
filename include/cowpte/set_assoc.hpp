// A set-associative array with true LRU replacement, the building block of every cache, TLB
// and paging-structure cache of the timing model (ChampSim's lru_table in spirit). Keys are
// 64-bit (a line number, or a PCID-tagged page number); the set is key % sets. Each way keeps
// the key, a payload and the time of its last use; the victim is the invalid way or the least
// recently used one.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <vector>

namespace cowpte {

struct NoPayload {};

template <class Payload = NoPayload>
class SetAssoc {
 public:
  struct Way {
    std::uint64_t key = 0;
    std::uint64_t last_use = 0;  // 0: invalid
    Payload value{};
  };

  SetAssoc() = default;
  SetAssoc(std::uint32_t sets, std::uint32_t ways) : sets_(sets), ways_(ways) {
    if (!sets || !ways || (sets & (sets - 1)))
      throw std::invalid_argument("SetAssoc: sets must be a power of two, ways at least 1");
    table_.resize(std::size_t(sets) * ways);
  }

  std::uint32_t sets() const noexcept { return sets_; }
  std::uint32_t ways() const noexcept { return ways_; }
  bool empty_geometry() const noexcept { return table_.empty(); }

  // The way holding key, marked most recently used; nullptr on a miss.
  Way* lookup(std::uint64_t key) noexcept {
    Way* set = set_of(key);
    for (std::uint32_t w = 0; w < ways_; ++w)
      if (set[w].last_use && set[w].key == key) {
        set[w].last_use = ++clock_;
        return &set[w];
      }
    return nullptr;
  }
  // Lookup without touching the LRU state (for checks and tests).
  const Way* peek(std::uint64_t key) const noexcept {
    const Way* set = set_of(key);
    for (std::uint32_t w = 0; w < ways_; ++w)
      if (set[w].last_use && set[w].key == key) return &set[w];
    return nullptr;
  }

  // Insert (or refresh) key; returns the key it evicted, if a valid one was.
  std::optional<std::uint64_t> insert(std::uint64_t key, const Payload& value = {}) noexcept {
    Way* set = set_of(key);
    Way* victim = &set[0];
    for (std::uint32_t w = 0; w < ways_; ++w) {
      if (set[w].last_use && set[w].key == key) {
        set[w].value = value;
        set[w].last_use = ++clock_;
        return std::nullopt;
      }
      if (set[w].last_use < victim->last_use) victim = &set[w];
    }
    std::optional<std::uint64_t> evicted;
    if (victim->last_use) evicted = victim->key;
    *victim = Way{key, ++clock_, value};
    return evicted;
  }

  // A cache access in one pass over the set: true on a hit (now most recently used); on a miss
  // key is filled into the invalid or least recently used way.
  bool access(std::uint64_t key) noexcept {
    Way* set = set_of(key);
    Way* victim = &set[0];
    for (std::uint32_t w = 0; w < ways_; ++w) {
      if (set[w].key == key && set[w].last_use) {
        set[w].last_use = ++clock_;
        return true;
      }
      if (set[w].last_use < victim->last_use) victim = &set[w];
    }
    victim->key = key;
    victim->last_use = ++clock_;
    return false;
  }

  bool invalidate(std::uint64_t key) noexcept {
    Way* set = set_of(key);
    for (std::uint32_t w = 0; w < ways_; ++w)
      if (set[w].last_use && set[w].key == key) {
        set[w].last_use = 0;
        return true;
      }
    return false;
  }
  template <class Pred>
  void invalidate_if(Pred&& pred) {
    for (Way& w : table_)
      if (w.last_use && pred(w)) w.last_use = 0;
  }
  void clear() noexcept {
    for (Way& w : table_) w.last_use = 0;
  }
  template <class F>
  void for_each_valid(F&& f) const {
    for (const Way& w : table_)
      if (w.last_use) f(w);
  }

 private:
  Way* set_of(std::uint64_t key) noexcept {
    return &table_[std::size_t(key & (sets_ - 1)) * ways_];
  }
  const Way* set_of(std::uint64_t key) const noexcept {
    return &table_[std::size_t(key & (sets_ - 1)) * ways_];
  }

  std::uint32_t sets_ = 0, ways_ = 0;
  std::uint64_t clock_ = 0;
  std::vector<Way> table_;
};

}  // namespace cowpte
