# The emulated CUDA device (DESIGN 9), included by CMakeLists.txt when
# RLK_CUDA_SIM=ON: each native/cuda/X.cu is translated (scripts/sim/translate.mjs)
# into a g++ translation unit that runs on native/sim/runtime.cc. Needs the
# CUDA toolkit's headers (not nvcc, not a GPU), Boost.Context
# (libboost-context-dev) and Node for the translator.
option(RLK_SIM_SANITIZERS "Build the AddressSanitizer and ThreadSanitizer drivers of the emulated device" ON)
if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/native/sim/tests/driver.cc)
  set(RLK_SIM_SANITIZERS OFF)
endif()

find_path(RLK_CUDA_INCLUDE cuda_runtime_api.h
          HINTS $ENV{CUDA_HOME}/include $ENV{CUDA_PATH}/include /usr/local/cuda/include /usr/include)
if(NOT RLK_CUDA_INCLUDE)
  message(FATAL_ERROR "rlkernels sim: the CUDA headers (cuda_runtime_api.h) were not found: install the CUDA toolkit or set CUDA_HOME")
endif()
find_path(RLK_BOOST_INCLUDE boost/context/detail/fcontext.hpp)
find_library(RLK_BOOST_CONTEXT NAMES libboost_context.a boost_context)
if(NOT RLK_BOOST_INCLUDE OR NOT RLK_BOOST_CONTEXT)
  message(FATAL_ERROR "rlkernels sim: Boost.Context was not found (apt-get install libboost-context-dev)")
endif()
find_program(RLK_NODE NAMES node nodejs REQUIRED)
find_package(Threads REQUIRED)

set(RLK_SIM_DIR ${CMAKE_CURRENT_SOURCE_DIR}/native/sim)
set(RLK_SIM_TRANSLATE ${CMAKE_CURRENT_SOURCE_DIR}/scripts/sim/translate.mjs)
set(RLK_SIM_GEN ${CMAKE_CURRENT_BINARY_DIR}/sim-gen)

# rlk_sim_translate(<out var> <.cu files>): the generated .cc of each.
function(rlk_sim_translate out)
  set(result)
  foreach(cu ${ARGN})
    get_filename_component(name ${cu} NAME_WE)
    get_filename_component(dir ${cu} DIRECTORY)
    get_filename_component(dir_name ${dir} NAME)
    set(cc ${RLK_SIM_GEN}/${dir_name}/${name}.cc)
    add_custom_command(OUTPUT ${cc}
                       COMMAND ${RLK_NODE} ${RLK_SIM_TRANSLATE} ${cu} ${cc}
                       DEPENDS ${cu} ${RLK_SIM_TRANSLATE}
                       COMMENT "rlk-sim: translating ${dir_name}/${name}.cu" VERBATIM)
    list(APPEND result ${cc})
  endforeach()
  set(${out} ${result} PARENT_SCOPE)
endfunction()

file(GLOB RLK_SIM_CU CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/native/cuda/*.cu)
rlk_sim_translate(RLK_SIM_KERNELS ${RLK_SIM_CU})
set(RLK_SIM_SOURCES ${RLK_SIM_KERNELS} ${RLK_SIM_DIR}/runtime.cc)
set(RLK_WITH_CUDA ON)
set(RLK_SIM_ARCHS "emulated sm_90 (native/sim: the .cu sources on the CPU)")
message(STATUS "rlkernels: CUDA kernels on the emulated device (CUDA headers ${RLK_CUDA_INCLUDE})")

# Includes and definitions of every target built against the emulator; the
# stand-in cuda_runtime.h comes before the toolkit's folder.
function(rlk_sim_target_setup target)
  target_include_directories(${target} BEFORE PRIVATE ${RLK_SIM_DIR}/include)
  target_include_directories(${target} PRIVATE ${RLK_CUDA_INCLUDE} ${RLK_BOOST_INCLUDE}
                             ${CMAKE_CURRENT_SOURCE_DIR}/native/include ${CMAKE_CURRENT_SOURCE_DIR}/native/cuda)
  target_compile_definitions(${target} PRIVATE RLK_WITH_CUDA=1 RLK_CUDA_SIM=1 "RLK_CUDA_ARCHS=\"${RLK_SIM_ARCHS}\"")
  target_compile_options(${target} PRIVATE -Wno-unknown-pragmas)
  target_link_libraries(${target} PRIVATE ${RLK_BOOST_CONTEXT} Threads::Threads)
endfunction()

function(rlk_sim_configure_addon target)
  rlk_sim_target_setup(${target})
endfunction()

# Sanitizer drivers: the kernels and the emulator in a plain executable
# (native/sim/tests/driver.cc) with deliberately broken kernels beside them.
if(RLK_SIM_SANITIZERS)
  file(GLOB RLK_SIM_TEST_CU CONFIGURE_DEPENDS ${RLK_SIM_DIR}/tests/*.cu)
  rlk_sim_translate(RLK_SIM_TEST_KERNELS ${RLK_SIM_TEST_CU})
  set(RLK_SIM_DRIVER_SOURCES ${RLK_SIM_KERNELS} ${RLK_SIM_TEST_KERNELS} ${RLK_SIM_DIR}/tests/driver.cc
      ${CMAKE_CURRENT_SOURCE_DIR}/native/cpu/runtime.cc)
  # ThreadSanitizer watches the kernels' memory; the emulator's own
  # bookkeeping (runtime.cc) stays uninstrumented and calls its fiber API.
  add_library(rlk_sim_runtime_tsan OBJECT ${RLK_SIM_DIR}/runtime.cc)
  rlk_sim_target_setup(rlk_sim_runtime_tsan)
  target_compile_definitions(rlk_sim_runtime_tsan PRIVATE RLK_SIM_TSAN=1)
  target_compile_options(rlk_sim_runtime_tsan PRIVATE -O2 -g)
  foreach(san asan tsan)
    set(t rlk_sim_${san})
    if(san STREQUAL "asan")
      add_executable(${t} ${RLK_SIM_DRIVER_SOURCES} ${RLK_SIM_DIR}/runtime.cc)
      set(flag -fsanitize=address)
    else()
      add_executable(${t} ${RLK_SIM_DRIVER_SOURCES} $<TARGET_OBJECTS:rlk_sim_runtime_tsan>)
      set(flag -fsanitize=thread)
    endif()
    rlk_sim_target_setup(${t})
    set_target_properties(${t} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/sim)
    target_compile_options(${t} PRIVATE -O1 -g -fno-omit-frame-pointer ${flag})
    target_link_options(${t} PRIVATE ${flag})
  endforeach()
endif()
