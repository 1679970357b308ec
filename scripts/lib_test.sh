#!/usr/bin/env bash
# Tests of scripts/lib.sh's build-tool checks against fake file systems: that "found" means what
# clang-sys (bindgen's libclang loader) would load, so a machine with only LLVM's C++ library is
# told that libclang is missing before a build fails minutes in. Run by scripts/test.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
unset LIBCLANG_PATH BINDGEN_EXTRA_CLANG_ARGS
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
passed=0 failed=0

# expect NAME WANT: the check of $root prints a line starting with WANT for libclang or headers.
expect() {
    local name="$1" want="$2" got
    got="$(check_build_tools "$root")"
    if grep -q "^$want" <<<"$got"; then
        echo "test build_tools::$name ... ok"; passed=$((passed + 1))
    else
        echo "test build_tools::$name ... FAILED: wanted a line '$want', got:"; sed 's/^/    /' <<<"$got"
        failed=$((failed + 1))
    fi
}
elf() { mkdir -p "$(dirname "$root/$1")"; cp "$(readlink -f /bin/true)" "$root/$1"; }

# What a fresh machine of this kind has: LLVM's C++ library, which clang-sys skips.
elf usr/lib/llvm-14/lib/libclang-cpp.so.14
ln -s ../llvm-14/lib/libclang-cpp.so.14 "$root/usr/lib/libclang-cpp.so.14"
expect only_libclang_cpp_is_missing "missing: libclang"
expect only_libclang_cpp_has_no_headers "missing: clang's headers"

# A file with libclang's name that is no 64-bit ELF library is not loadable either.
echo "not a library" > "$root/usr/lib/llvm-14/lib/libclang.so.1"
expect non_elf_libclang_is_missing "missing: libclang"
rm "$root/usr/lib/llvm-14/lib/libclang.so.1"

# The runtime package's library (Debian's libclang1-N), found under its versioned name.
elf usr/lib/x86_64-linux-gnu/libclang-14.so.14.0.6
expect runtime_libclang_is_found "ok: libclang $root/usr/lib/x86_64-linux-gnu/libclang-14.so.14.0.6"
expect libclang_without_stddef_is_missing_headers "missing: clang's headers"

# Headers beside a libclang unpacked elsewhere are not where Debian's libclang looks...
mkdir -p "$root/home/me/clang/lib/clang/14.0.6/include"
touch "$root/home/me/clang/lib/clang/14.0.6/include/stddef.h"
expect unpacked_headers_alone_are_missing "missing: clang's headers"
# ...unless BINDGEN_EXTRA_CLANG_ARGS names them, in either spelling.
BINDGEN_EXTRA_CLANG_ARGS="-isystem $root/home/me/clang/lib/clang/14.0.6/include" \
    expect headers_named_by_bindgen_args_are_found "ok: clang headers $root/home/me/clang/lib/clang/14.0.6/include"
BINDGEN_EXTRA_CLANG_ARGS="-I$root/home/me/clang/lib/clang/14.0.6/include" \
    expect headers_named_by_bindgen_args_are_found_joined "ok: clang headers $root/home/me/clang/lib/clang/14.0.6/include"

# clang's headers from the common development package (Debian's libclang-common-N-dev).
mkdir -p "$root/usr/lib/llvm-14/lib/clang/14.0.6/include"
touch "$root/usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h"
expect clang_headers_are_found "ok: clang headers $root/usr/lib/llvm-14/lib/clang/14.0.6/include"

# Another LLVM's libclang does not parse with clang 14's headers.
mv "$root/usr/lib/x86_64-linux-gnu/libclang-14.so.14.0.6" "$root/usr/lib/x86_64-linux-gnu/libclang-15.so.15.0.7"
expect other_versions_headers_are_missing "missing: clang's headers"

# Cargo's summary format, so that scripts/test.sh counts these with the Rust tests.
status=ok; [ "$failed" -gt 0 ] && status=FAILED
echo "test result: $status. $passed passed; $failed failed"
[ "$failed" -eq 0 ]
