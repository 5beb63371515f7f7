# node-gyp build of the same CPU addon CMakeLists.txt builds (CMake is the source
# of truth; CI builds both). File lists come from cmake/sources.cjs; ISA flags go
# to one static library per ISA folder, exactly as cmake/QuantformIsa.cmake does.
{
  "target_defaults": {
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
    "cflags_cc": ["-std=c++17", "-O3", "-ffp-contract=off", "-fno-math-errno", "-fvisibility=hidden",
                  "-fvisibility-inlines-hidden", "-fPIC", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    "include_dirs": ["native/include", "<!(node -p \"require('node-addon-api').include_dir\")"],
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_CPP_EXCEPTIONS_ALL", "NODE_ADDON_API_DISABLE_DEPRECATED"]
  },
  "targets": [
    {
      "target_name": "qf_avx2",
      "type": "static_library",
      "sources": ["<!@(node cmake/sources.cjs avx2)"],
      "cflags_cc": ["-Wno-maybe-uninitialized", "-mavx2", "-mfma", "-mf16c"]
    },
    {
      "target_name": "qf_avx512",
      "type": "static_library",
      "sources": ["<!@(node cmake/sources.cjs avx512)"],
      "cflags_cc": ["-Wno-maybe-uninitialized", "-mavx2", "-mfma", "-mf16c", "-mbmi2", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]
    },
    {
      "target_name": "qf_avx512vnni",
      "type": "static_library",
      "sources": ["<!@(node cmake/sources.cjs avx512vnni)"],
      "cflags_cc": ["-Wno-maybe-uninitialized", "-mavx2", "-mfma", "-mf16c", "-mbmi2", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                    "-mavx512vnni", "-mavx512bf16"]
    },
    {
      "target_name": "qf_avx512bf16",
      "type": "static_library",
      "sources": ["<!@(node cmake/sources.cjs avx512bf16)"],
      "cflags_cc": ["-Wno-maybe-uninitialized", "-mavx2", "-mfma", "-mf16c", "-mbmi2", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                    "-mavx512bf16", "-mamx-tile", "-mamx-bf16", "-mamx-int8"]
    },
    {
      "target_name": "quantform",
      "dependencies": ["qf_avx2", "qf_avx512", "qf_avx512vnni", "qf_avx512bf16"],
      "sources": ["<!@(node cmake/sources.cjs common)", "<!@(node cmake/sources.cjs ref)",
                  "<!@(node cmake/sources.cjs cpu)", "<!@(node cmake/sources.cjs addon)"],
      "ldflags": ["-Wl,--exclude-libs,ALL", "-static-libstdc++", "-static-libgcc", "-pthread",
                  "-Wl,--version-script=<(module_root_dir)/cmake/exports.map"]
    }
  ]
}
