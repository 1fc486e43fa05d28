# Runs one compile-fail test: compiles SOURCE (syntax only) and requires the
# compiler to reject it with the message given on the file's first line
# ("// expect: <regex>"); with CONTROL=ON the same file, compiled with
# -DLEVEE_COMPILE_FAIL_CONTROL, must compile cleanly (so the rejection comes
# from the construct under test, not from a mistake elsewhere in the file).
# Usage: cmake -DCOMPILER=... -DINCLUDE=... -DSOURCE=... [-DCONTROL=ON] -P run.cmake
file(STRINGS "${SOURCE}" expect_line REGEX "^// expect: " LIMIT_COUNT 1)
if(NOT expect_line)
  message(FATAL_ERROR "${SOURCE}: no '// expect: <regex>' line")
endif()
string(REGEX REPLACE "^// expect: " "" expect "${expect_line}")
set(args -std=c++20 -fsyntax-only "-I${INCLUDE}")
if(CONTROL)
  list(APPEND args -DLEVEE_COMPILE_FAIL_CONTROL)
endif()
execute_process(COMMAND "${COMPILER}" ${args} "${SOURCE}" RESULT_VARIABLE rc OUTPUT_VARIABLE out
                ERROR_VARIABLE err)
if(CONTROL)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "the control variant of ${SOURCE} must compile:\n${err}")
  endif()
  return()
endif()
if(rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but must be rejected with: ${expect}")
endif()
if(NOT "${out}${err}" MATCHES "${expect}")
  message(FATAL_ERROR "${SOURCE} was rejected, but without the expected message '${expect}':\n${err}")
endif()
message(STATUS "rejected as expected: ${expect}")
