# Reads the per-folder source lists from cmake/sources.cjs (shared with binding.gyp).
find_program(QF_NODE NAMES node nodejs REQUIRED)
foreach(set common ref cpu avx2 avx512 avx512vnni addon cuda)
  execute_process(COMMAND ${QF_NODE} ${CMAKE_CURRENT_SOURCE_DIR}/cmake/sources.cjs ${set} --cmake
                  OUTPUT_VARIABLE _files RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "cmake/sources.cjs ${set} failed")
  endif()
  string(TOUPPER ${set} _SET)
  set(QF_SOURCES_${_SET})
  foreach(f ${_files})
    list(APPEND QF_SOURCES_${_SET} ${CMAKE_CURRENT_SOURCE_DIR}/${f})
  endforeach()
  # re-run CMake when a file is added to or removed from the folder
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/native)
endforeach()
