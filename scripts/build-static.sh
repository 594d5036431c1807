#!/usr/bin/env bash
# Build fully static x86_64-unknown-linux-musl release binaries of every
# binary in the package (aistudioproxy, and aisp-testchild once it exists),
# copy them to a stable place and print path and size.
#
# Two ways to get there, picked automatically:
#   rustup   - when `rustup target list --installed` already has the musl
#              target: a plain `cargo build --target x86_64-unknown-linux-musl`.
#   debian   - otherwise (rustup cannot download targets on machines without
#              its distribution server): Debian's rustc-web/cargo-web 1.96 with
#              rust-web-src rebuild std for musl (-Zbuild-std, allowed by
#              RUSTC_BOOTSTRAP=1), link with musl-gcc, and take the unwinder
#              from LLVM's libunwind-14-dev.
# Force one with STATIC_BUILD_MODE=rustup|debian.
#
# The build uses its own target dir (default target/static-build) so it never
# invalidates the normal debug/release builds, and copies the results to
# target/static/ (override with STATIC_OUT_DIR).
#
# Missing Debian packages are installed with apt-get (we run as root on the
# build machines); set STATIC_BUILD_NO_INSTALL=1 to only report them.
set -euo pipefail

TARGET=x86_64-unknown-linux-musl
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

BUILD_DIR=${STATIC_TARGET_DIR:-$ROOT/target/static-build}
OUT_DIR=${STATIC_OUT_DIR:-$ROOT/target/static}
MODE=${STATIC_BUILD_MODE:-auto}

die() { echo "build-static: $*" >&2; exit 1; }
log() { echo "build-static: $*" >&2; }

# apt_need PKG...: install the Debian packages that are not installed yet.
apt_need() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "${STATIC_BUILD_NO_INSTALL:-0}" = 1 ]; then
        die "missing Debian packages: ${missing[*]} (STATIC_BUILD_NO_INSTALL=1 forbids installing them)"
    fi
    [ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]}; run as root or install them first"
    log "installing ${missing[*]}"
    # The package lists may be missing on a fresh machine; refresh only then
    # or when the first attempt cannot find a package.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; then
        apt-get update >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

if [ "$MODE" = auto ]; then
    if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
        MODE=rustup
    else
        MODE=debian
    fi
fi

# C code in the dependency tree (ring, aws-lc-sys) must be compiled against
# musl's headers, not glibc's, or the link pulls in glibc-only symbols.
export CC_x86_64_unknown_linux_musl=musl-gcc
export AR_x86_64_unknown_linux_musl=ar
# aws-lc-sys: never pick up a system (glibc) AWS-LC; use its cc-crate builder,
# which needs no cmake and ships pre-generated bindings for this target.
export AWS_LC_SYS_USE_SYSTEM=0
export AWS_LC_SYS_CMAKE_BUILDER=0

start=$(date +%s)
case "$MODE" in
rustup)
    apt_need musl-tools file
    log "mode rustup: cargo $(cargo -V | cut -d' ' -f2), target $TARGET"
    export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static"
    cargo build --locked --release --bins --target "$TARGET" --target-dir "$BUILD_DIR"
    ;;
debian)
    apt_need rustc-web cargo-web rust-web-src musl-tools libunwind-14-dev file
    # Debian's toolchain lives in /usr/bin; a rustup proxy earlier on PATH
    # must not take over, so name both tools by path.
    CARGO=/usr/bin/cargo
    export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
    [ -d "$($RUSTC --print sysroot)/lib/rustlib/src/rust/library/std" ] \
        || die "rust-web-src does not provide std sources under $($RUSTC --print sysroot)/lib/rustlib/src"
    log "mode debian: $($RUSTC -V), -Zbuild-std for $TARGET"

    # Debian's libunwind.a was compiled with _FORTIFY_SOURCE and calls glibc's
    # __fprintf_chk on its (debug-only) error path; musl has no such symbol.
    # A one-function shim forwards it to vfprintf. Passed as an object file,
    # it is linked unconditionally, wherever it sits on the command line.
    SHIM_DIR=$BUILD_DIR/musl-shim
    mkdir -p "$SHIM_DIR"
    cat >"$SHIM_DIR/fortify_shim.c.new" <<'EOF'
#include <stdarg.h>
#include <stdio.h>
int __fprintf_chk(FILE *stream, int flag, const char *fmt, ...) {
    (void)flag;
    va_list ap;
    va_start(ap, fmt);
    int n = vfprintf(stream, fmt, ap);
    va_end(ap);
    return n;
}
EOF
    if ! cmp -s "$SHIM_DIR/fortify_shim.c.new" "$SHIM_DIR/fortify_shim.c"; then
        mv "$SHIM_DIR/fortify_shim.c.new" "$SHIM_DIR/fortify_shim.c"
        musl-gcc -O2 -c "$SHIM_DIR/fortify_shim.c" -o "$SHIM_DIR/fortify_shim.o"
    else
        rm -f "$SHIM_DIR/fortify_shim.c.new"
    fi

    export RUSTC_BOOTSTRAP=1
    export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=musl-gcc
    # crt-static: a static executable; link-self-contained=no: Debian ships no
    # self-contained musl CRT objects, musl-gcc provides them;
    # relocation-model=static: a plain static executable rather than
    # static-pie, which musl-gcc's startup files do not support.
    export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static -C link-self-contained=no -C relocation-model=static -L native=/usr/lib/llvm-14/lib -C link-arg=$SHIM_DIR/fortify_shim.o"
    "$CARGO" build --locked --release --bins --target "$TARGET" --target-dir "$BUILD_DIR" \
        -Zbuild-std=std,panic_unwind
    ;;
*)
    die "STATIC_BUILD_MODE must be auto, rustup or debian, not '$MODE'"
    ;;
esac
elapsed=$(( $(date +%s) - start ))

# Copy every binary target of the package to the stable output dir.
bins=$(cargo metadata --no-deps --format-version 1 \
    | python3 -c 'import json,sys; print(" ".join(t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"] if "bin" in t["kind"]))')
mkdir -p "$OUT_DIR"
for bin in $bins; do
    src=$BUILD_DIR/$TARGET/release/$bin
    [ -f "$src" ] || die "cargo reported success but $src is missing"
    desc=$(file -b "$src")
    case "$desc" in
    *"statically linked"*|*"static-pie linked"*) ;;
    *) die "$src is not static: $desc" ;;
    esac
    if ldd "$src" >/dev/null 2>&1; then
        die "$src: ldd treats it as a dynamic executable"
    fi
    cp -f "$src" "$OUT_DIR/$bin.tmp"
    mv -f "$OUT_DIR/$bin.tmp" "$OUT_DIR/$bin"
    size=$(stat -c %s "$OUT_DIR/$bin")
    printf '%s\t%s bytes (%s KiB)\t%s\n' "$OUT_DIR/$bin" "$size" "$(( size / 1024 ))" "$desc"
done
log "mode $MODE, build took ${elapsed}s"
