// main() for a header-only Catch2 v2 without the Catch2WithMain library (tests/CMakeLists.txt
// uses Catch2::Catch2WithMain instead whenever it exists: Catch2 v3, Debian's v2.13).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
