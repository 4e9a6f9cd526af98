// The kernel paths return errors as Linux does: 0 or a negative errno (-ENOMEM), from <cerrno>.
// The facade's Errno enum carries the same numbers; this header ties the two together, so that
// a kernel path's -ENOMEM is Errno::nomem wherever its result reaches the facade.
#pragma once

#include <cerrno>

#include "cowpte/types.hpp"

namespace cowpte {

static_assert(EPERM == int(Errno::perm) && ENOENT == int(Errno::noent) &&
                  ESRCH == int(Errno::srch) && EIO == int(Errno::io) && EBADF == int(Errno::badf) &&
                  EAGAIN == int(Errno::again) && ENOMEM == int(Errno::nomem) &&
                  EACCES == int(Errno::acces) && EFAULT == int(Errno::fault) &&
                  EBUSY == int(Errno::busy) && EEXIST == int(Errno::exist) &&
                  EINVAL == int(Errno::inval) && ENOSPC == int(Errno::nospc),
              "the host's errno values are Linux's x86-64 ones");

}  // namespace cowpte
