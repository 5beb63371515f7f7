# ISA flags apply to the files of one folder only, never to the whole target:
# only cpu/avx2/*.cpp may contain AVX2 code, only cpu/avx512/*.cpp AVX-512 code,
# and dispatch.cpp decides at run time which of them may execute.
#   avx2:       Haswell / Zen 1 and later (AVX2 + FMA + F16C)
#   avx512:     Skylake-X / Zen 4 and later (F + BW + VL + DQ), BMI2 for pdep/pext
#   avx512vnni: Cascade Lake / Zen 4 and later, int8 dot products (kernels there
#               are only called when cpuid reports VNNI)
#   avx512bf16: Cooper Lake / Sapphire Rapids / Zen 4 and later, bf16 dot products, and the AMX (bf16, int8)
#               tile kernels of Sapphire Rapids (called only when cpuid reports them and Linux
#               grants the tile state; the compiler never emits AMX on its own)
# GCC 12 reports false -Wmaybe-uninitialized inside its own intrinsic headers
set(QF_FLAGS_AVX2 -mavx2 -mfma -mf16c -Wno-maybe-uninitialized)
set(QF_FLAGS_AVX512 -Wno-maybe-uninitialized -mavx2 -mfma -mf16c -mbmi2 -mavx512f -mavx512bw -mavx512vl -mavx512dq)
set(QF_FLAGS_AVX512VNNI ${QF_FLAGS_AVX512} -mavx512vnni -mavx512bf16)
set(QF_FLAGS_AVX512BF16 ${QF_FLAGS_AVX512} -mavx512bf16 -mamx-tile -mamx-bf16 -mamx-int8)

macro(qf_set_isa_flags)
  if(QF_SOURCES_AVX2)
    set_source_files_properties(${QF_SOURCES_AVX2} PROPERTIES COMPILE_OPTIONS "${QF_FLAGS_AVX2}")
  endif()
  if(QF_SOURCES_AVX512)
    set_source_files_properties(${QF_SOURCES_AVX512} PROPERTIES COMPILE_OPTIONS "${QF_FLAGS_AVX512}")
  endif()
  if(QF_SOURCES_AVX512VNNI)
    set_source_files_properties(${QF_SOURCES_AVX512VNNI} PROPERTIES COMPILE_OPTIONS "${QF_FLAGS_AVX512VNNI}")
  endif()
  if(QF_SOURCES_AVX512BF16)
    set_source_files_properties(${QF_SOURCES_AVX512BF16} PROPERTIES COMPILE_OPTIONS "${QF_FLAGS_AVX512BF16}")
  endif()
endmacro()
