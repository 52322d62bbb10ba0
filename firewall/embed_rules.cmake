# Turns the rule templates in rules/ into C string literals (fw_rules_tmpl.h) so the files stay
# the single source of truth: the renderer never carries a second copy that could drift.
# Script mode: cmake -DIN_DIR=<rules dir> -DOUT=<header> -P embed_rules.cmake
set(out "/* Generated from firewall/rules/ by embed_rules.cmake: edit the rule files. */\n")
string(APPEND out "#pragma once\n\n")
foreach(pair "ipc.v4.rules=fw_tmpl_ipc_v4" "ipc.v6.rules=fw_tmpl_ipc_v6"
             "tcp.v4.rules.in=fw_tmpl_tcp_v4" "tcp.v6.rules.in=fw_tmpl_tcp_v6")
  string(REPLACE "=" ";" kv "${pair}")
  list(GET kv 0 file)
  list(GET kv 1 var)
  file(READ "${IN_DIR}/${file}" text)
  string(REPLACE "\\" "\\\\" text "${text}")
  string(REPLACE "\"" "\\\"" text "${text}")
  string(REPLACE "\n" "\\n\"\n    \"" text "${text}")
  string(APPEND out "static const char ${var}[] =\n    \"${text}\";\n\n")
endforeach()
file(WRITE "${OUT}.tmp" "${out}")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
