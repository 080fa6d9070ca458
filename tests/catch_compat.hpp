#pragma once
// Catch2 v2 / v3 compatibility: include this instead of any Catch2 header.
// Use only the API common to both versions: TEST_CASE, TEMPLATE_TEST_CASE, GENERATE, SECTION,
// CAPTURE / INFO, REQUIRE_THAT / CHECK_THAT with Catch::Matchers::WithinAbs / WithinRel /
// WithinULP. Never `Approx` (spelled differently in v2 and v3). See style.md 6.3 and 8.4.

#if __has_include(<catch2/catch_test_macros.hpp>)  // Catch2 v3
#  include <catch2/catch_test_macros.hpp>
#  include <catch2/catch_template_test_macros.hpp>
#  include <catch2/generators/catch_generators.hpp>
#  include <catch2/generators/catch_generators_random.hpp>
#  include <catch2/generators/catch_generators_range.hpp>
#  include <catch2/matchers/catch_matchers_floating_point.hpp>
#else                                              // Catch2 v2 (Debian 12: 2.13.10)
#  include <catch2/catch.hpp>
#endif
