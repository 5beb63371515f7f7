# qf_add_addon(<name> SOURCES ... LIBS ...): a Node-API module `<name>.node` in
# build/Release (where node-gyp-build looks), built against node-api-headers
# (cmake-js 8 provides CMAKE_JS_INC) and node-addon-api.
execute_process(COMMAND ${QF_NODE} -p "require('node-addon-api').include_dir"
                WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}
                OUTPUT_VARIABLE QF_NAPI_INC OUTPUT_STRIP_TRAILING_WHITESPACE)

function(qf_add_addon name)
  cmake_parse_arguments(A "" "" "SOURCES;LIBS" ${ARGN})
  add_library(${name} SHARED ${A_SOURCES} ${CMAKE_JS_SRC})
  set_target_properties(${name} PROPERTIES PREFIX "" SUFFIX ".node"
                        LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/Release)
  target_include_directories(${name} PRIVATE ${CMAKE_JS_INC} ${CMAKE_CURRENT_SOURCE_DIR}/${QF_NAPI_INC}
                                             ${CMAKE_CURRENT_SOURCE_DIR}/native/include)
  # CPP_EXCEPTIONS_ALL: node-addon-api's own wrappers (ObjectWrap, AsyncWorker) turn any
  # C++ exception that reaches them into a JS error; nothing may unwind into Node's frames
  target_compile_definitions(${name} PRIVATE NAPI_VERSION=8 NAPI_CPP_EXCEPTIONS NODE_ADDON_API_CPP_EXCEPTIONS_ALL NODE_ADDON_API_DISABLE_DEPRECATED)
  target_link_libraries(${name} PRIVATE ${A_LIBS} ${CMAKE_JS_LIB})
  # no unresolved symbols except those Node provides at load time
  target_link_options(${name} PRIVATE -Wl,--exclude-libs,ALL -static-libstdc++ -static-libgcc
                      -Wl,--version-script=${CMAKE_CURRENT_SOURCE_DIR}/cmake/exports.map)
endfunction()
