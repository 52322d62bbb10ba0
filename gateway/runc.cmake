# The sandboxed launcher (runc) and its root-only end-to-end test. Kept apart from the gateway
# library so it builds and tests on its own. Paths are relative to this file so the file can
# be included from anywhere.
add_library(kbox_launcher_runc STATIC ${CMAKE_CURRENT_LIST_DIR}/launcher_runc.c)
target_include_directories(kbox_launcher_runc PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(kbox_launcher_runc PUBLIC kbox_worker_image kbox_common)

if(BUILD_TESTING)
  set(KBOX_ROOT_TESTS ${CMAKE_CURRENT_LIST_DIR}/../tests/root)
  add_executable(sandbox_driver ${KBOX_ROOT_TESTS}/sandbox_driver.c)
  target_link_libraries(sandbox_driver PRIVATE kbox_launcher_runc)

  # Real runc, real ipykernel, every in-kernel row of security.md. Needs root; fails (never
  # skips) without it.
  add_test(NAME root_sandbox
    COMMAND ${KBOX_PYTHON} -m pytest -q -s -p no:cacheprovider ${KBOX_ROOT_TESTS}/test_sandbox.py)
  set_tests_properties(root_sandbox PROPERTIES
    ENVIRONMENT "KBOX_SANDBOX_DRIVER=$<TARGET_FILE:sandbox_driver>;KBOX_KERNEL_HOST=$<TARGET_FILE:kbox-kernel-host>;KBOX_BUILD_ROOTFS=${CMAKE_CURRENT_LIST_DIR}/../worker-image/build-rootfs.sh;KBOX_SECCOMP_PROFILE=${CMAKE_CURRENT_LIST_DIR}/../worker-image/seccomp.json;PYTHONDONTWRITEBYTECODE=1"
    TIMEOUT 900
    RUN_SERIAL TRUE)
endif()
