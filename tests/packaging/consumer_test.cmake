# Packaging test driver, run as `cmake -D... -P consumer_test.cmake` by ctest (tests/CMakeLists.txt).
# Configures, builds and runs the consumer project in examples/fetchcontent/ in a fresh build
# directory, getting losskit in one of two ways:
#   MODE=fetchcontent   FetchContent_Declare(losskit SOURCE_DIR <this checkout>)
#   MODE=find_package   `cmake --install` of this build into a private prefix, then
#                       find_package(losskit 0.1 REQUIRED) with -DLOSSKIT_USE_FIND_PACKAGE=ON
# Any failing step fails the test (FATAL_ERROR, with the step's output shown by ctest).
#
# Inputs (-D): MODE, WORK_DIR, LOSSKIT_SOURCE_DIR, CONSUMER_SOURCE_DIR, CMAKE_GENERATOR,
# CMAKE_CXX_COMPILER, CONFIG (may be empty), LOSSKIT_BINARY_DIR (find_package mode only).

cmake_minimum_required(VERSION 3.16)

foreach(var MODE WORK_DIR LOSSKIT_SOURCE_DIR CONSUMER_SOURCE_DIR CMAKE_GENERATOR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "consumer_test.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT CONFIG)
  set(CONFIG Release)
endif()

function(run_step what)
  string(REPLACE ";" " " cmd "${ARGN}")
  message(STATUS "[${MODE}] ${what}: ${cmd}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "[${MODE}] ${what} failed (${rc}): ${cmd}")
  endif()
endfunction()

set(build_dir ${WORK_DIR}/build)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

set(configure_args
  -S ${CONSUMER_SOURCE_DIR} -B ${build_dir}
  -G ${CMAKE_GENERATOR}
  -DCMAKE_BUILD_TYPE=${CONFIG}
  -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER})

if(MODE STREQUAL "fetchcontent")
  list(APPEND configure_args -DLOSSKIT_SOURCE=${LOSSKIT_SOURCE_DIR})
elseif(MODE STREQUAL "find_package")
  if(NOT LOSSKIT_BINARY_DIR)
    message(FATAL_ERROR "consumer_test.cmake: MODE=find_package needs -DLOSSKIT_BINARY_DIR=...")
  endif()
  set(prefix ${WORK_DIR}/prefix)
  run_step("install losskit" ${CMAKE_COMMAND} --install ${LOSSKIT_BINARY_DIR} --config ${CONFIG}
           --prefix ${prefix})
  if(NOT EXISTS ${prefix}/include/losskit/losskit.hpp)
    message(FATAL_ERROR "[${MODE}] the install has no include/losskit/losskit.hpp")
  endif()
  # Only the private prefix: the consumer must not pick up the build tree's losskitConfig.cmake.
  list(APPEND configure_args -DLOSSKIT_USE_FIND_PACKAGE=ON -DCMAKE_PREFIX_PATH=${prefix}
       -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
else()
  message(FATAL_ERROR "consumer_test.cmake: unknown MODE '${MODE}' (fetchcontent or find_package)")
endif()

run_step("configure consumer" ${CMAKE_COMMAND} ${configure_args})
run_step("build consumer" ${CMAKE_COMMAND} --build ${build_dir} --config ${CONFIG})

# Single-config generators put the binary in the build dir, multi-config ones in <config>/.
set(exe ${build_dir}/losskit_consumer)
if(NOT EXISTS ${exe})
  set(exe ${build_dir}/${CONFIG}/losskit_consumer)
endif()
run_step("run consumer" ${exe})
message(STATUS "[${MODE}] consumer passed")
