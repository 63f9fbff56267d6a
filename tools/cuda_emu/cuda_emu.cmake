# The CPU stand-in for the CUDA runtime, cuBLASLt and NCCL (README.md beside
# this file), selected with -DLORA_TRAIN_CUDA=EMU. Included by the top-level
# CMakeLists.txt: defines the library cuda_emu and cuda_emu_add_sources().
set(CUDA_EMU_DIR ${CMAKE_CURRENT_LIST_DIR})
add_library(cuda_emu STATIC ${CUDA_EMU_DIR}/src/runtime.cpp ${CUDA_EMU_DIR}/src/launch.cpp
            ${CUDA_EMU_DIR}/src/cublaslt.cpp ${CUDA_EMU_DIR}/src/nccl.cpp)
target_include_directories(cuda_emu PUBLIC ${CUDA_EMU_DIR}/include PRIVATE ${CUDA_EMU_DIR}/src)
target_compile_features(cuda_emu PUBLIC cxx_std_17)
target_compile_options(cuda_emu PRIVATE -Wall -Wextra -Werror -ffp-contract=off)
target_link_libraries(cuda_emu PUBLIC Threads::Threads rt)

# cuda_emu_add_sources(target a.cu b.cu ...): each .cu rewritten by
# rewrite.cmake into the build tree and compiled by the C++ compiler, with no
# FMA contraction (as __fmul_rn / __fadd_rn promise).
function(cuda_emu_add_sources target)
  foreach(cu ${ARGN})
    get_filename_component(stem ${cu} NAME_WE)
    set(cpp ${CMAKE_BINARY_DIR}/cuda_emu_src/${stem}.cpp)
    add_custom_command(OUTPUT ${cpp}
                       COMMAND ${CMAKE_COMMAND} -DIN=${cu} -DOUT=${cpp} -P ${CUDA_EMU_DIR}/rewrite.cmake
                       DEPENDS ${cu} ${CUDA_EMU_DIR}/rewrite.cmake VERBATIM)
    target_sources(${target} PRIVATE ${cpp})
    set_source_files_properties(${cpp} PROPERTIES COMPILE_OPTIONS
                                "-ffp-contract=off;-Wall;-Wno-unknown-pragmas;-Werror")
  endforeach()
  target_include_directories(${target} PRIVATE ${CMAKE_SOURCE_DIR}/kernels/cuda)
  target_link_libraries(${target} PUBLIC cuda_emu)
endfunction()
