// The fork-policy registry: the built-in policies (builtin.def) and those research code
// registers (register_fork_policy), by name.
#include <algorithm>
#include <string>
#include <vector>

#include "cowpte/machine.hpp"
#include "cowpte/model/fork_policy.hpp"

namespace cowpte {

#define COWPTE_FORK_POLICY(id) const ForkPolicy& id##_fork_policy() noexcept;
#include "fork/policies/builtin.def"
#undef COWPTE_FORK_POLICY

namespace {

std::vector<const ForkPolicy*>& registry() {
  static std::vector<const ForkPolicy*> policies{
#define COWPTE_FORK_POLICY(id) &id##_fork_policy(),
#include "fork/policies/builtin.def"
#undef COWPTE_FORK_POLICY
  };
  return policies;
}

bool valid_name(std::string_view n) noexcept {
  return !n.empty() && std::all_of(n.begin(), n.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

}  // namespace

const ForkPolicy* find_fork_policy(std::string_view name) noexcept {
  for (const ForkPolicy* p : registry())
    if (p->name() == name) return p;
  return nullptr;
}

Result<void> register_fork_policy(const ForkPolicy& policy) {
  if (!valid_name(policy.name())) return Errno::inval;
  if (find_fork_policy(policy.name())) return Errno::exist;
  registry().push_back(&policy);
  return {};
}

std::vector<std::string> fork_policy_names() {
  std::vector<std::string> names;
  for (const ForkPolicy* p : registry()) names.emplace_back(p->name());
  return names;
}

std::vector<std::string> sound_fork_policy_names() {
  std::vector<std::string> names;
  for (const ForkPolicy* p : registry())
    if (!p->as_posted()) names.emplace_back(p->name());
  return names;
}

}  // namespace cowpte
