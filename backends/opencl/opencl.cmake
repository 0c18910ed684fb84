# CMake fragment of the OpenCL backend, include()d by the top-level CMakeLists.txt after find_package(OpenCL),
# with MLSTM_LIB_TARGET naming the library target. Embeds kernels_cl/*.cl as C headers under
# ${CMAKE_BINARY_DIR}/generated (cmake/mlstm_embed_cl.cmake), adds the host sources and links OpenCL, and CLBlast
# for the materialised algorithm when MLSTM_ENABLE_CLBLAST is on and CLBlast is found (else that algorithm
# reports MLSTM_ERR_UNSUPPORTED).
get_filename_component(_mlstm_root "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)
set(_mlstm_cl_gen "${CMAKE_BINARY_DIR}/generated")
set(_mlstm_cl_headers "")
foreach(_cl common fwd bwd materialized)
  set(_in "${_mlstm_root}/kernels_cl/${_cl}.cl")
  set(_out "${_mlstm_cl_gen}/kernels_cl/${_cl}.cl.h")
  add_custom_command(OUTPUT "${_out}"
    COMMAND "${CMAKE_COMMAND}" -E make_directory "${_mlstm_cl_gen}/kernels_cl"
    COMMAND "${CMAKE_COMMAND}" "-DIN=${_in}" "-DOUT=${_out}" -P "${_mlstm_root}/cmake/mlstm_embed_cl.cmake"
    DEPENDS "${_in}" "${_mlstm_root}/cmake/mlstm_embed_cl.cmake"
    COMMENT "Embedding kernels_cl/${_cl}.cl"
    VERBATIM)
  list(APPEND _mlstm_cl_headers "${_out}")
endforeach()
add_custom_target(mlstm_cl_kernels DEPENDS ${_mlstm_cl_headers})
add_dependencies(${MLSTM_LIB_TARGET} mlstm_cl_kernels)

target_sources(${MLSTM_LIB_TARGET} PRIVATE
  "${_mlstm_root}/backends/opencl/backend_opencl.c"
  "${_mlstm_root}/backends/opencl/cl_program.c"
  "${_mlstm_root}/backends/opencl/materialized_cl.c")
set_source_files_properties("${_mlstm_root}/backends/opencl/cl_program.c"
  PROPERTIES OBJECT_DEPENDS "${_mlstm_cl_headers}")
target_include_directories(${MLSTM_LIB_TARGET} PRIVATE "${_mlstm_cl_gen}" "${_mlstm_root}/backends/opencl")
target_link_libraries(${MLSTM_LIB_TARGET} PRIVATE OpenCL::OpenCL)
target_compile_definitions(${MLSTM_LIB_TARGET} PUBLIC MLSTM_HAVE_OPENCL=1 CL_TARGET_OPENCL_VERSION=120)

if(MLSTM_ENABLE_CLBLAST)
  find_package(CLBlast CONFIG QUIET)
  if(TARGET clblast)
    target_link_libraries(${MLSTM_LIB_TARGET} PRIVATE clblast)
    target_compile_definitions(${MLSTM_LIB_TARGET} PRIVATE MLSTM_HAVE_CLBLAST=1)
    message(STATUS "libmlstm: CLBlast found: the OpenCL backend has the materialised algorithm")
  else()
    message(STATUS "libmlstm: CLBlast not found (Debian: libclblast-dev); the OpenCL materialised algorithm reports "
                   "MLSTM_ERR_UNSUPPORTED")
  endif()
endif()
