// The trace file format (include/cowpte/trace.hpp, docs/trace-format.md): a header, then one
// record per event, each a kind byte and LEB128 varints. Page-granular fields are stored as
// page numbers, touch sets as the first page and the gaps between pages, so that a step that
// wrote a contiguous run of pages costs about one byte per page.
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cowpte/trace.hpp"

namespace cowpte {

namespace {

constexpr unsigned kPageShift = 12;
constexpr std::uint64_t kPageMask = (1ull << kPageShift) - 1;
constexpr std::uint32_t kMaxMetadata = 1u << 20;

bool aligned(std::uint64_t v) { return (v & kPageMask) == 0; }

void check_range(const TraceEvent& e) {
  if (!aligned(e.addr) || !aligned(e.length) || e.length == 0)
    throw std::invalid_argument(std::string("trace: ") + std::string(to_string(e.kind)) +
                                " needs a page-aligned address and a non-zero whole-page length");
}

}  // namespace

std::string_view to_string(TraceKind k) {
  switch (k) {
    case TraceKind::end:
      return "end";
    case TraceKind::step:
      return "step";
    case TraceKind::spawn:
      return "spawn";
    case TraceKind::mmap:
      return "mmap";
    case TraceKind::munmap:
      return "munmap";
    case TraceKind::mprotect:
      return "mprotect";
    case TraceKind::madvise:
      return "madvise";
    case TraceKind::fork:
      return "fork";
    case TraceKind::clone:
      return "clone";
    case TraceKind::exit:
      return "exit";
    case TraceKind::load:
      return "load";
    case TraceKind::store:
      return "store";
    case TraceKind::touch:
      return "touch";
  }
  return "?";
}

// --- TraceWriter ---

TraceWriter::TraceWriter(const std::string& path, const std::string& metadata_json) : path_(path) {
  if (metadata_json.size() > kMaxMetadata)
    throw std::invalid_argument("trace: metadata larger than 1 MiB");
  f_ = std::fopen(path.c_str(), "wb");
  if (!f_) throw TraceError("trace: cannot create '" + path + "': " + std::strerror(errno));
  try {
    write_header(metadata_json);
  } catch (...) {  // no destructor runs after a throwing constructor
    std::fclose(f_);
    f_ = nullptr;
    throw;
  }
}

void TraceWriter::write_header(const std::string& metadata_json) {
  put_raw(kTraceMagic, sizeof kTraceMagic);
  const std::uint32_t v = kTraceVersion, n = std::uint32_t(metadata_json.size());
  const unsigned char hdr[8] = {std::uint8_t(v),       std::uint8_t(v >> 8), std::uint8_t(v >> 16),
                                std::uint8_t(v >> 24), std::uint8_t(n),      std::uint8_t(n >> 8),
                                std::uint8_t(n >> 16), std::uint8_t(n >> 24)};
  put_raw(hdr, sizeof hdr);
  put_raw(metadata_json.data(), metadata_json.size());
}

TraceWriter::~TraceWriter() {
  try {
    close();
  } catch (...) {  // a destructor must not throw; close() explicitly to see the error
  }
}

void TraceWriter::put_raw(const void* p, std::size_t n) {
  if (n && std::fwrite(p, 1, n, f_) != n)
    throw TraceError("trace: writing '" + path_ + "': " + std::strerror(errno));
  bytes_ += n;
}
void TraceWriter::put_byte(std::uint8_t b) { put_raw(&b, 1); }
void TraceWriter::put_varint(std::uint64_t v) {
  std::uint8_t buf[10];
  std::size_t n = 0;
  do {
    buf[n] = std::uint8_t(v & 0x7f);
    v >>= 7;
    if (v) buf[n] |= 0x80;
    ++n;
  } while (v);
  put_raw(buf, n);
}

void TraceWriter::write(const TraceEvent& e) {
  if (!f_) throw TraceError("trace: '" + path_ + "' is closed");
  switch (e.kind) {
    case TraceKind::end:
      throw std::invalid_argument("trace: the end record is close()'s");
    case TraceKind::step:
      if (e.time_ns < last_step_ns_)
        throw std::invalid_argument("trace: a step earlier than the one before it");
      put_byte(std::uint8_t(e.kind));
      put_varint(e.time_ns - last_step_ns_);
      last_step_ns_ = e.time_ns;
      break;
    case TraceKind::spawn:
    case TraceKind::exit:
      put_byte(std::uint8_t(e.kind));
      put_varint(e.pid);
      break;
    case TraceKind::fork:
    case TraceKind::clone:
      put_byte(std::uint8_t(e.kind));
      put_varint(e.pid);
      put_varint(e.child);
      break;
    case TraceKind::mmap:
    case TraceKind::munmap:
    case TraceKind::mprotect:
    case TraceKind::madvise:
      check_range(e);
      put_byte(std::uint8_t(e.kind));
      put_varint(e.pid);
      put_varint(e.addr >> kPageShift);
      put_varint(e.length >> kPageShift);
      if (e.kind == TraceKind::mmap || e.kind == TraceKind::mprotect)
        put_varint(std::uint32_t(e.prot));
      if (e.kind == TraceKind::mmap) put_varint(std::uint32_t(e.flags));
      if (e.kind == TraceKind::madvise) put_varint(std::uint32_t(int(e.advice)));
      break;
    case TraceKind::load:
    case TraceKind::store:
      if (e.addr & 7) throw std::invalid_argument("trace: a load or store must be 8-byte aligned");
      put_byte(std::uint8_t(e.kind));
      put_varint(e.pid);
      put_varint(e.addr >> 3);
      if (e.kind == TraceKind::store) put_varint(e.value);
      break;
    case TraceKind::touch: {
      for (std::size_t i = 0; i < e.pages.size(); ++i)
        if (!aligned(e.pages[i]) || (i && e.pages[i] <= e.pages[i - 1]))
          throw std::invalid_argument("trace: touched pages must be page-aligned and ascending");
      put_byte(std::uint8_t(e.kind));
      put_varint(e.pid);
      put_byte(e.write ? 1 : 0);
      put_varint(e.pages.size());
      std::uint64_t prev = 0;
      for (vaddr_t p : e.pages) {
        put_varint((p >> kPageShift) - prev);  // the first page, then gaps (>= 1)
        prev = p >> kPageShift;
      }
      break;
    }
    default:
      throw std::invalid_argument("trace: unknown event kind");
  }
  ++events_;
}

void TraceWriter::close() {
  if (!f_) return;
  std::FILE* f = f_;
  put_byte(std::uint8_t(TraceKind::end));
  put_varint(events_);
  f_ = nullptr;
  const bool flushed = std::fflush(f) == 0;
  const int err = errno;
  const bool closed = std::fclose(f) == 0;
  if (!flushed || !closed)
    throw TraceError("trace: writing '" + path_ + "': " + std::strerror(flushed ? errno : err));
}

// --- TraceReader ---

TraceReader::TraceReader(const std::string& path) : path_(path) {
  f_ = std::fopen(path.c_str(), "rb");
  if (!f_) throw TraceError("trace: cannot open '" + path + "': " + std::strerror(errno));
  struct stat st {};
  if (::fstat(::fileno(f_), &st) == 0) size_ = std::uint64_t(st.st_size);
  open_checked();
}

TraceReader::TraceReader(const void* bytes, std::size_t size, const std::string& name)
    : path_(name), size_(size) {
  // fmemopen refuses an empty buffer: an empty trace is as short as a file can be.
  if (size == 0) fail("not a cowpte trace (too short)");
  f_ = ::fmemopen(const_cast<void*>(bytes), size, "rb");
  if (!f_) throw TraceError("trace: cannot read '" + name + "': " + std::strerror(errno));
  open_checked();
}

// A constructor that throws runs no destructor: the file is closed here.
void TraceReader::open_checked() {
  try {
    read_header();
  } catch (...) {
    std::fclose(f_);
    f_ = nullptr;
    throw;
  }
}

void TraceReader::read_header() {
  char magic[sizeof kTraceMagic];
  for (char& c : magic) {
    const int b = get_byte();
    if (b < 0) fail("not a cowpte trace (too short)");
    c = char(b);
  }
  if (std::memcmp(magic, kTraceMagic, sizeof magic) != 0) fail("not a cowpte trace (bad magic)");
  auto u32 = [this] {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= std::uint32_t(byte()) << (8 * i);
    return v;
  };
  version_ = u32();
  if (version_ == 0 || version_ > kTraceVersion)
    fail("trace version " + std::to_string(version_) + " (this library reads 1 to " +
         std::to_string(kTraceVersion) + ")");
  const std::uint32_t n = u32();
  if (n > kMaxMetadata) fail("metadata larger than 1 MiB");
  metadata_.resize(n);
  for (char& c : metadata_) c = char(byte());
}

TraceReader::~TraceReader() {
  if (f_) std::fclose(f_);
}

void TraceReader::fail(const std::string& what) const {
  throw TraceError("trace '" + path_ + "', offset " + std::to_string(offset_) + ": " + what);
}

int TraceReader::get_byte() {
  const int c = std::getc(f_);
  if (c != EOF) ++offset_;
  return c == EOF ? -1 : c;
}

std::uint8_t TraceReader::byte() {
  const int c = get_byte();
  if (c < 0) fail("the file ends inside a record (truncated trace)");
  return std::uint8_t(c);
}

std::uint64_t TraceReader::varint() {
  std::uint64_t v = 0;
  for (unsigned shift = 0;; shift += 7) {
    const std::uint8_t b = byte();
    if (shift == 63 && b > 1) fail("a varint longer than 64 bits");
    v |= std::uint64_t(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
}

bool TraceReader::next(TraceEvent& e) {
  if (ended_) return false;
  const int k = get_byte();
  if (k < 0) fail("the file ends without its end record (truncated trace)");
  const std::uint64_t record_at = offset_ - 1;
  auto pid = [this] {
    const std::uint64_t v = varint();
    if (v > 0xffffffffu) fail("a pid beyond 32 bits");
    return std::uint32_t(v);
  };
  auto page = [this](std::uint64_t pfn) {
    if (pfn > (~0ull >> kPageShift)) fail("an address beyond 64 bits");
    return pfn << kPageShift;
  };
  std::vector<vaddr_t> pages = std::move(e.pages);  // keep its capacity for the next touch
  e = TraceEvent{};
  e.pages = std::move(pages);
  e.pages.clear();
  e.kind = TraceKind(k);
  switch (e.kind) {
    case TraceKind::end: {
      const std::uint64_t n = varint();
      if (n != events_)
        fail("the end record counts " + std::to_string(n) + " events, the file holds " +
             std::to_string(events_));
      ended_ = true;
      return false;
    }
    case TraceKind::step: {
      const std::uint64_t dt = varint();
      if (dt > ~0ull - last_step_ns_) fail("a step time beyond 64 bits");
      e.time_ns = last_step_ns_ += dt;
      break;
    }
    case TraceKind::spawn:
    case TraceKind::exit:
      e.pid = pid();
      break;
    case TraceKind::fork:
    case TraceKind::clone:
      e.pid = pid();
      e.child = pid();
      break;
    case TraceKind::mmap:
    case TraceKind::munmap:
    case TraceKind::mprotect:
    case TraceKind::madvise:
      e.pid = pid();
      e.addr = page(varint());
      e.length = page(varint());
      if (e.kind == TraceKind::mmap || e.kind == TraceKind::mprotect)
        e.prot = Prot(std::uint32_t(varint()));
      if (e.kind == TraceKind::mmap) e.flags = MapFlags(std::uint32_t(varint()));
      if (e.kind == TraceKind::madvise) e.advice = Advice(int(varint()));
      break;
    case TraceKind::load:
    case TraceKind::store: {
      e.pid = pid();
      const std::uint64_t w = varint();
      if (w > (~0ull >> 3)) fail("an address beyond 64 bits");
      e.addr = w << 3;
      if (e.kind == TraceKind::store) e.value = varint();
      break;
    }
    case TraceKind::touch: {
      e.pid = pid();
      const std::uint8_t w = byte();
      if (w > 1) fail("a touch record's write flag is neither 0 nor 1");
      e.write = w == 1;
      const std::uint64_t n = varint();
      // Every page takes at least one byte: a count beyond the file's size is corrupt (and must
      // not make the reader reserve memory for it).
      if (n > size_) fail("a touch record of " + std::to_string(n) + " pages in a smaller file");
      e.pages.reserve(n);
      std::uint64_t prev = 0;
      for (std::uint64_t i = 0; i < n; ++i) {
        const std::uint64_t gap = varint();
        if (i && gap == 0) fail("touched pages out of order");
        if (gap > (~0ull >> kPageShift) - prev) fail("an address beyond 64 bits");
        prev += gap;
        e.pages.push_back(page(prev));
      }
      break;
    }
    default:
      offset_ = record_at;
      fail("unknown record kind " + std::to_string(k));
  }
  ++events_;
  return true;
}

}  // namespace cowpte
