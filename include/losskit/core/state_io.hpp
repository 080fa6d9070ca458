#pragma once
// Binary save/restore of the state that stateful losses own (ELR targets, ALDR lambdas): an
// 8-byte tag naming the format, then the fields in native byte order. A round trip on one
// platform is exact; files are not meant to move between byte orders.

#include <cstddef>
#include <cstring>
#include <istream>
#include <ostream>

#include "losskit/core/checks.hpp"

namespace losskit::detail {

inline void write_raw(std::ostream& os, const void* p, std::size_t bytes) {
  os.write(static_cast<const char*>(p), std::streamsize(bytes));
}

// Reads exactly `bytes` bytes or fails with "<fn>: truncated stream".
inline void read_raw(const char* fn, std::istream& is, void* p, std::size_t bytes) {
  is.read(static_cast<char*>(p), std::streamsize(bytes));
  if (std::size_t(is.gcount()) != bytes) fail(fn, "truncated stream");
}

// Checks the 8-byte tag at the start of a stream.
inline void read_tag(const char* fn, std::istream& is, const char (&tag)[9], const char* what) {
  char got[8];
  is.read(got, 8);
  if (is.gcount() != 8 || std::memcmp(got, tag, 8) != 0) fail(fn, "not ", what, " (the stream does not start with ", tag, ")");
}

}  // namespace losskit::detail
