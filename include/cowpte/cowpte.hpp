// The umbrella header of cowpte: the whole facade (docs/facade.md). The model layer for research
// extensions (fork policies, page-table entries, struct page) is <cowpte/model/model.hpp>.
#pragma once

#include "cowpte/config_io.hpp"
#include "cowpte/explore.hpp"
#include "cowpte/format.hpp"
#include "cowpte/machine.hpp"
#include "cowpte/result.hpp"
#include "cowpte/stats.hpp"
#include "cowpte/timing_config.hpp"
#include "cowpte/trace.hpp"
#include "cowpte/types.hpp"
