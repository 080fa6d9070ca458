# losskit's dependencies: Eigen 3.4+ and xsimd 8.1+.
#
# Included by the top-level CMakeLists.txt and, after install, by losskitConfig.cmake (this file
# is installed next to it). It provides two targets:
#   Eigen3::Eigen    from Eigen's own package config, unless the target already exists
#                    (a parent project that added Eigen itself);
#   losskit::xsimd   an INTERFACE IMPORTED GLOBAL target carrying only xsimd's include
#                    directories. Debian 12's xsimd 8.1 export links a library `xtl` that no
#                    package provides (`cannot find -lxtl`); copying only the include directories
#                    drops that link, and an IMPORTED target makes xsimd a system include (no
#                    warnings from its headers). GLOBAL so that every directory of a
#                    FetchContent / add_subdirectory consumer sees it.
#
# Versions are checked by hand: Eigen and xsimd both ship SameMajorVersion version files, so
# find_package(xsimd 8.1) would reject xsimd 13 and find_package(Eigen3 3.4) would reject Eigen 5.
#
# When a dependency is missing: a FATAL_ERROR naming the Debian package to install, or, when
# loaded by find_package(losskit) (_losskit_in_package_config set by losskitConfig.cmake),
# losskit_FOUND = FALSE with the same message, so that find_package(losskit QUIET) stays quiet.

macro(_losskit_missing_dependency)
  string(CONCAT _losskit_msg ${ARGN})
  if(_losskit_in_package_config)
    set(losskit_FOUND FALSE)
    set(losskit_NOT_FOUND_MESSAGE "${_losskit_msg}")
    unset(_losskit_msg)
    return()
  else()
    message(FATAL_ERROR "${_losskit_msg}")
  endif()
endmacro()

# --- Eigen ---------------------------------------------------------------------------------------
if(NOT TARGET Eigen3::Eigen)
  find_package(Eigen3 NO_MODULE QUIET)
  if(NOT Eigen3_FOUND OR NOT TARGET Eigen3::Eigen)
    _losskit_missing_dependency(
      "losskit needs Eigen 3.4 or newer (CMake package Eigen3, target Eigen3::Eigen), which was not "
      "found. On Debian/Ubuntu: apt-get install libeigen3-dev. Elsewhere set Eigen3_DIR to the "
      "directory holding Eigen3Config.cmake.")
  endif()
  if(DEFINED Eigen3_VERSION AND Eigen3_VERSION VERSION_LESS 3.4)
    _losskit_missing_dependency(
      "losskit needs Eigen 3.4 or newer; found ${Eigen3_VERSION} in ${Eigen3_DIR}. "
      "On Debian/Ubuntu: apt-get install libeigen3-dev (Debian 12 ships 3.4.0).")
  endif()
endif()

# --- xsimd ---------------------------------------------------------------------------------------
if(NOT TARGET losskit::xsimd)
  if(NOT TARGET xsimd)
    find_package(xsimd NO_MODULE QUIET)
    if(NOT xsimd_FOUND OR NOT TARGET xsimd)
      _losskit_missing_dependency(
        "losskit needs xsimd 8.1 or newer (CMake package xsimd, target xsimd), which was not "
        "found. On Debian/Ubuntu: apt-get install libxsimd-dev. Elsewhere set xsimd_DIR, or "
        "add xsimd with FetchContent/add_subdirectory before losskit.")
    endif()
    if(DEFINED xsimd_VERSION AND xsimd_VERSION VERSION_LESS 8.1)
      _losskit_missing_dependency(
        "losskit needs xsimd 8.1 or newer; found ${xsimd_VERSION} in ${xsimd_DIR}. "
        "On Debian/Ubuntu: apt-get install libxsimd-dev (Debian 12 ships 8.1.0).")
    endif()
  endif()
  get_target_property(_losskit_xsimd_includes xsimd INTERFACE_INCLUDE_DIRECTORIES)
  if(NOT _losskit_xsimd_includes)
    _losskit_missing_dependency(
      "losskit: the xsimd target has no INTERFACE_INCLUDE_DIRECTORIES; reinstall xsimd "
      "(Debian/Ubuntu: apt-get install --reinstall libxsimd-dev).")
  endif()
  add_library(losskit::xsimd INTERFACE IMPORTED GLOBAL)
  set_target_properties(losskit::xsimd PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${_losskit_xsimd_includes}")
  unset(_losskit_xsimd_includes)
endif()
