# HTTP/1.1 server and WebSocket layer (kbox_http), their unit tests and fuzz targets.
# Included by gateway/CMakeLists.txt; kept apart so the library builds and tests on its own.
set(KBOX_HTTP_SOURCES ${CMAKE_CURRENT_LIST_DIR}/http.c ${CMAKE_CURRENT_LIST_DIR}/ws.c)

add_library(kbox_http STATIC ${KBOX_HTTP_SOURCES})
target_include_directories(kbox_http PUBLIC ${CMAKE_CURRENT_LIST_DIR}
                           PRIVATE ${HTTP_PARSER_INCLUDE_DIR} ${WSLAY_INCLUDE_DIR})
target_link_libraries(kbox_http PUBLIC kbox_common
                      PRIVATE ${HTTP_PARSER_LIBRARY} ${WSLAY_LIBRARY} PkgConfig::NETTLE
                              PkgConfig::SODIUM)

foreach(t http ws)
  add_executable(test_${t} ${PROJECT_SOURCE_DIR}/tests/unit/test_${t}.c)
  target_link_libraries(test_${t} PRIVATE kbox_http PkgConfig::CMOCKA Threads::Threads)
  add_test(NAME unit_${t} COMMAND test_${t})
  set_tests_properties(unit_${t} PROPERTIES TIMEOUT 120)
endforeach()

# libFuzzer targets. The library sources are compiled into each target so that they carry the
# fuzzer's coverage instrumentation (the static library does not).
if(KBOX_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(WARNING "KBOX_FUZZ needs clang: http/ws fuzz targets skipped")
  else()
    foreach(t http ws)
      add_executable(fuzz_${t} ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_${t}.c ${KBOX_HTTP_SOURCES})
      target_include_directories(fuzz_${t} PRIVATE ${CMAKE_CURRENT_LIST_DIR}
                                 ${HTTP_PARSER_INCLUDE_DIR} ${WSLAY_INCLUDE_DIR})
      target_compile_options(fuzz_${t} PRIVATE -fsanitize=fuzzer,address,undefined
                             -fno-omit-frame-pointer)
      target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer,address,undefined)
      target_link_libraries(fuzz_${t} PRIVATE kbox_common ${HTTP_PARSER_LIBRARY} ${WSLAY_LIBRARY}
                            PkgConfig::NETTLE PkgConfig::SODIUM)
    endforeach()
  endif()
endif()
