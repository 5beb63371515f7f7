# The CUDA module, quantform_cuda.node, built whenever nvcc is found (also on
# machines without a GPU: it must compile on CI). Loaded lazily by lib/cuda.ts, so
# a missing driver or GPU never stops quantform from loading.
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER OR QF_NO_CUDA OR NOT QF_SOURCES_CUDA)
  message(STATUS "quantform: no nvcc found, skipping quantform_cuda.node")
  return()
endif()
# Architectures, each with its reason:
#   80-real    Ampere A100; its cubin also runs on sm_86 / sm_89 (RTX 30xx/40xx, L4, L40)
#   90-real    Hopper H100 / H200
#   90-virtual PTX, JIT-compiled by the driver on newer GPUs (Blackwell sm_100/sm_120)
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 80-real 90-real 90-virtual)
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_VISIBILITY_PRESET hidden)

# napi_util.cpp: the same argument unwrapping and error mapping as the CPU addon
qf_add_addon(quantform_cuda SOURCES ${QF_SOURCES_CUDA} ${CMAKE_CURRENT_SOURCE_DIR}/native/addon/napi_util.cpp LIBS qf_cpu)
target_include_directories(quantform_cuda PRIVATE ${CMAKE_CUDA_TOOLKIT_INCLUDE_DIRECTORIES})
set_target_properties(quantform_cuda PROPERTIES CUDA_RUNTIME_LIBRARY Static CUDA_SEPARABLE_COMPILATION OFF)
target_compile_options(quantform_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo>)
