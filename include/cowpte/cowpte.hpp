// The umbrella header of cowpte: the facade of shared/design/facade.md and its extensions.
#pragma once

#include "cowpte/config_io.hpp"
#include "cowpte/hw.hpp"
#include "cowpte/machine.hpp"
#include "cowpte/result.hpp"
#include "cowpte/types.hpp"
