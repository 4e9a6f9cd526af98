// The library's own way behind the facade: the Kernel of a Machine and the mm of a Process.
// Not installed; the library's paths, its tests and its benchmarks use it, research code uses
// the facade and the model layer (<cowpte/model/model.hpp>).
#pragma once

#include "cowpte/machine.hpp"

namespace cowpte::detail {

struct Access {
  static Kernel& kernel(Machine& m) { return m.kernel(); }
  static const Kernel& kernel(const Machine& m) { return m.kernel(); }
  static MmStruct* mm(Process& p) { return p.mm(); }  // nullptr after exit
  static const MmStruct* mm(const Process& p) { return p.mm(); }
};

}  // namespace cowpte::detail
