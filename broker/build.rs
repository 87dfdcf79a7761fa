//! Link options that make the release `tern` binary smaller (docs/decisions/0007-binary-size.md):
//! identical code folding (`--icf=all`, 0.36 MB) and packed relative relocations
//! (`-z pack-relative-relocs`, DT_RELR, 0.5 MB). Only where they are known to work: a release
//! build for x86_64 Linux with Rust's own lld (the default linker of that target since Rust
//! 1.90, unless a linker was chosen), and DT_RELR only when the C library linked against
//! defines `GLIBC_ABI_DT_RELR` (glibc 2.36 or later): an older loader would not apply the packed
//! relocations. Anything else links as before.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    if env::var("PROFILE").as_deref() != Ok("release")
        || env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || env::var_os("RUSTC_LINKER").is_some()
        || env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|flags| flags.contains("link"))
        || !rustc_links_with_lld()
    {
        return;
    }
    println!("cargo:rustc-link-arg-bin=tern=-Wl,--icf=all");
    if libc_has_dt_relr() {
        println!("cargo:rustc-link-arg-bin=tern=-Wl,-z,pack-relative-relocs");
    }
}

/// rustc 1.90 or later links x86_64 Linux binaries with its bundled lld.
fn rustc_links_with_lld() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let release = text.lines().find_map(|l| l.strip_prefix("release: ")).unwrap_or("");
    let mut parts = release.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}

/// The libc.so.6 the C compiler driver links against defines the DT_RELR version.
fn libc_has_dt_relr() -> bool {
    let Ok(out) = Command::new("cc").arg("-print-file-name=libc.so.6").output() else { return false };
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    std::fs::read(&path).is_ok_and(|lib| lib.windows(17).any(|w| w == b"GLIBC_ABI_DT_RELR"))
}
