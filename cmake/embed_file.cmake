# Writes a C++ header that holds a file's bytes, for files compiled into the program (the chat
# page that `specula serve` answers GET / with), so the binary needs no files at run time:
#   cmake -DINPUT=file -DOUTPUT=header.h -DNAME=kName -P embed_file.cmake
# defines `inline constexpr unsigned char kName[]` (the bytes, then a 0 that is not counted) and
# `inline constexpr std::size_t kNameSize`.
file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" hex_length)
math(EXPR size "${hex_length} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
file(WRITE "${OUTPUT}.tmp"
  "// Generated from ${INPUT} by cmake/embed_file.cmake at build time; do not edit.\n"
  "#pragma once\n#include <cstddef>\n"
  "inline constexpr unsigned char ${NAME}[] = {\n${bytes}0x00};\n"
  "inline constexpr std::size_t ${NAME}Size = ${size};\n")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
