// The text form of trace events (cowpte-trace print and assemble; docs/traces.md): one event a
// line, the kind first, numbers in decimal or 0x hex, so that a trace can be read, diffed,
// written by hand and turned back into the binary form.
//
//   step 100000000                       the step's time in ns since the trace began
//   spawn 1200 | exit 1200 | fork 1200 1201 | clone 1200 1202
//   mmap 1200 0x7f0000000000 65536 rw- private|anonymous
//   munmap 1200 0x7f0000000000 4096 | mprotect 1200 0x7f0000000000 4096 r--
//   madvise 1200 0x7f0000000000 4096 dontneed
//   load 1200 0x7f0000000008 | store 1200 0x7f0000000008 42
//   touch 1200 w 0x7f0000000000+16 0x7f0000100000   (r or w; +N: a run of N pages)
#pragma once

#include <string>

#include "cowpte/trace.hpp"

namespace cowpte::tracetool {

std::string to_text(const TraceEvent& e);
// The event of one line; throws std::invalid_argument naming what is wrong.
TraceEvent from_text(const std::string& line);

}  // namespace cowpte::tracetool
