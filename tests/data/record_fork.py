# A program for cowpte-record's check (scripts/check-cli.sh): it writes 4,096 pages of private
# memory, forks; the child writes the first 2,048 and exits; meanwhile the parent writes 1,024
# others. The recorder must see the fork, the child's 2,048 writes (COW copies) and the
# parent's 1,024 after the fork.
import mmap
import os
import time

PAGE = 4096
m = mmap.mmap(-1, 4096 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(4096):
    m[i * PAGE] = 1
time.sleep(0.3)
pid = os.fork()
if pid == 0:
    for i in range(2048):
        m[i * PAGE] = 2
    time.sleep(0.4)
    os._exit(0)
time.sleep(0.2)
for i in range(3072, 4096):
    m[i * PAGE] = 3
os.waitpid(pid, 0)
time.sleep(0.3)
