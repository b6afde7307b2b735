//! Bundle import (DESIGN.md §6): a 1 GiB bundle (scaled by `STELLA_BENCH_SCALE`) verified,
//! decompressed, hashed, unpacked and fsynced into the sealed store, in MB/s of unpacked bytes,
//! against a plain sequential write (+ fsync) of the same bytes and against the shell pipeline
//! `zstd -dc | tee >(sha256sum) | tar -x` (+ `sync -f`), all on the same disk in the same run.
//! Peak RSS of the import is read from `VmHWM` after resetting it.

mod common;

use sha2::Digest;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stella::domain::bundles::{build, format::Kind, import, verify};

const FILE_BYTES: usize = 16 * 1024 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

/// Text-like content (hex digits from SplitMix64) that zstd compresses about 2:1, so that
/// decompression costs what it costs on real artifacts.
fn make_input(root: &Path, total: usize) -> usize {
    std::fs::create_dir_all(root.join("lib")).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; FILE_BYTES];
    let files = total.div_ceil(FILE_BYTES);
    for i in 0..files {
        for chunk in buf.chunks_mut(16) {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = b"0123456789abcdef"[((z >> (j * 4)) & 0xf) as usize];
            }
        }
        std::fs::write(root.join(format!("lib/part-{i:04}.bin")), &buf).unwrap();
    }
    files * FILE_BYTES
}

fn peak_reset() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn settle() {
    // Dirty pages of the previous contestant are written back before the next one starts.
    let _ = std::process::Command::new("sync").status();
}

fn sequential_write(input: &Path, out: &Path) -> Duration {
    settle();
    let started = Instant::now();
    let mut f = std::fs::File::create(out).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut parts: Vec<PathBuf> = std::fs::read_dir(input.join("lib")).unwrap().map(|e| e.unwrap().path()).collect();
    parts.sort();
    for p in parts {
        let mut r = std::fs::File::open(p).unwrap();
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n]).unwrap();
        }
    }
    f.sync_all().unwrap();
    started.elapsed()
}

fn shell_pipeline(payload: &Path, out: &Path) -> Option<Duration> {
    settle();
    std::fs::create_dir_all(out).unwrap();
    let script = format!(
        "set -eo pipefail; zstd -qdc '{}' | tee >(sha256sum >/dev/null) | tar -x -C '{}'; sync -f '{}'",
        payload.display(),
        out.display(),
        out.display()
    );
    let started = Instant::now();
    let ok = std::process::Command::new("bash").arg("-c").arg(&script).status().ok()?.success();
    ok.then(|| started.elapsed())
}

fn main() {
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"bundle".contains(a.as_str())) {
        return;
    }
    let total = common::scale(1 << 30, 64 << 20);
    let d = common::dir();
    let root = d.path();
    let input = root.join("input");
    let unpacked = make_input(&input, total);

    // TEST-ONLY KEY, generated for this run.
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).unwrap();
    let key = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&seed));
    let signers = root.join("allowed_signers");
    stella::trust::store::append_signer(&signers, "bench", key.public_key(), "stella-bundle@stella.invalid", None)
        .unwrap();
    let trust = stella::trust::store::TrustStore::load_files(&signers, None).unwrap();
    let bundle = root.join("big.bundle");
    let built = Instant::now();
    let manifest = build::build_to(&input, Kind::Dag, "big", "1", &key, &bundle, 3).unwrap();
    println!(
        "bundle import: {:.0} MiB unpacked in {} files, payload {:.0} MiB (zstd -3, built in {:.1} s)",
        unpacked as f64 / MIB,
        manifest.files.len() - 1,
        manifest.payload.size as f64 / MIB,
        built.elapsed().as_secs_f64()
    );
    let payload = root.join("payload.tar.zst");
    let x = std::process::Command::new("tar")
        .args(["-xf", bundle.to_str().unwrap(), "-C", root.to_str().unwrap(), "payload.tar.zst"])
        .status()
        .unwrap();
    assert!(x.success());
    assert_eq!(hex::encode(sha2::Sha256::digest(std::fs::read(&payload).unwrap())), manifest.payload.sha256);

    let now = stella::clock::SystemClock.now();
    let rate = |t: Duration| unpacked as f64 / MIB / t.as_secs_f64();

    // The disk's sequential speed is taken as the better of a run before and one after the
    // others: a virtual disk's write-back state makes a single run noisy.
    let seq_write = || {
        let r = rate(sequential_write(&input, &root.join("sequential.bin")));
        let _ = std::fs::remove_file(root.join("sequential.bin"));
        r
    };
    let seq_before = seq_write();

    settle();
    let started = Instant::now();
    let v = verify::verify(&bundle, &trust, now).unwrap();
    let verify_only = rate(started.elapsed());
    assert_eq!(v.unpacked_bytes as usize, unpacked);

    let lib = root.join("lib");
    settle();
    peak_reset();
    let started = Instant::now();
    let progress = stella::progress::Progress::default();
    let envelope = verify::check_envelope(&bundle, &trust, now, &progress).unwrap();
    let sealed = import::seal(&bundle, &envelope, &lib, &progress).unwrap();
    let stella = rate(started.elapsed());
    let peak = peak_mib();
    assert!(sealed.join("lib/part-0000.bin").is_file());
    let _ = std::fs::remove_dir_all(&lib);

    let shell = shell_pipeline(&payload, &root.join("shell")).map(rate);
    let _ = std::fs::remove_dir_all(root.join("shell"));
    let seq_after = seq_write();
    let seq = seq_before.max(seq_after);
    println!("sequential write runs: {seq_before:.0} and {seq_after:.0} MB/s; the better is the baseline");
    println!("{:<58} {:>8} {:>10} {:>8}", "what", "MB/s", "÷seq write", "÷shell");
    let row = |what: &str, mbs: f64| {
        let vs_shell = shell.map_or("n/a".to_owned(), |s| format!("{:.2}x", mbs / s));
        println!("{what:<58} {mbs:>8.0} {:>9.2}x {vs_shell:>8}", mbs / seq);
    };
    row("sequential write + fsync of the same bytes", seq);
    if let Some(s) = shell {
        row("shell: zstd -dc | tee >(sha256sum) | tar -x; sync -f", s);
    } else {
        println!("shell pipeline: zstd, tee, sha256sum or tar missing; skipped");
    }
    row("stella import: verify, decompress, hash, unpack, fsync", stella);
    row("stella bundle verify (full walk, writes nothing)", verify_only);
    println!("peak RSS during the import: {peak:.1} MiB (VmHWM, reset before it)");

    // Where the time goes: the two CPU-bound stages alone, over the same bytes.
    let part = std::fs::read(input.join("lib/part-0000.bin")).unwrap();
    let started = Instant::now();
    let mut h = sha2::Sha256::new();
    for _ in 0..unpacked / part.len() {
        h.update(&part);
    }
    std::hint::black_box(h.finalize());
    println!("  sha256 alone (sha2 crate): {:.0} MB/s", rate(started.elapsed()));
    let started = Instant::now();
    let mut dec = zstd::stream::read::Decoder::new(std::fs::File::open(&payload).unwrap()).unwrap();
    std::io::copy(&mut dec, &mut std::io::sink()).unwrap();
    println!("  zstd decode alone (zstd crate): {:.0} MB/s", rate(started.elapsed()));
}
