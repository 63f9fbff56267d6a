# cmake -DIN=x.cu -DOUT=x.cpp -P rewrite.cmake
# The two CUDA syntaxes g++ rejects, rewritten mechanically (emu_device.h):
#   k<<<config>>>(args)       ->  ::emu::Launch("k", config).run(k, args)
#   extern __shared__ T x[];  ->  T *x = (T *)::emu::dynamic_shared();
# Everything else reaches the compiler as written; #line keeps diagnostics
# and __FILE__ pointing at the .cu file.
file(READ "${IN}" text)
set(name "[A-Za-z_][A-Za-z_0-9]*")
set(space "[ \t\r\n]*")
string(REGEX REPLACE "(${name})${space}<<<(([^>]|->)*)>>>${space}\\(${space}\\)" "::emu::Launch(\"\\1\", \\2).run(\\1)"
       text "${text}")
string(REGEX REPLACE "(${name})${space}<<<(([^>]|->)*)>>>${space}\\(" "::emu::Launch(\"\\1\", \\2).run(\\1, " text "${text}")
string(REGEX REPLACE "extern${space}__shared__${space}([^;\\[]*[^;\\[ \t])[ \t]+(${name})${space}\\[${space}\\]${space};"
       "\\1 *\\2 = (\\1 *)::emu::dynamic_shared();" text "${text}")
if(text MATCHES "<<<|extern${space}__shared__")
  message(FATAL_ERROR "${IN}: a kernel launch or extern __shared__ declaration that rewrite.cmake cannot rewrite")
endif()
file(WRITE "${OUT}.tmp" "#line 1 \"${IN}\"\n${text}")
file(RENAME "${OUT}.tmp" "${OUT}")
