# A program for cowpte-record's idle-page check (scripts/check-cli.sh), playing the kernel's part
# in a stand-in bitmap file (argv[1]): it writes 1,024 pages of private memory, writes their
# address to argv[2], waits until the recorder has marked all their frames idle, then reads the
# first 512 and clears those frames' bits (what the kernel does when a frame is accessed). The
# recorder must report exactly those 512 as read.
import mmap
import os
import struct
import sys
import time

PAGE, N = 4096, 1024
bitmap, out = sys.argv[1], sys.argv[2]
m = mmap.mmap(-1, N * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(N):
    m[i * PAGE] = 1
import ctypes
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
with open(out, "w") as f:
    f.write(f"{addr:#x}\n")
with open("/proc/self/pagemap", "rb") as f:
    f.seek(addr // PAGE * 8)
    pfns = [v & ((1 << 55) - 1) for v in struct.unpack(f"{N}Q", f.read(N * 8))]
fd = os.open(bitmap, os.O_RDWR)


def word(pfn):
    return struct.unpack("Q", os.pread(fd, 8, pfn // 64 * 8))[0]


deadline = time.time() + 10
while not all(word(p) >> (p % 64) & 1 for p in pfns):
    if time.time() > deadline:
        sys.exit("the recorder never marked the frames idle")
    time.sleep(0.005)
total = 0
for i in range(N // 2):
    total += m[i * PAGE]
    p = pfns[i]
    os.pwrite(fd, struct.pack("Q", word(p) & ~(1 << (p % 64))), p // 64 * 8)
time.sleep(0.3)
