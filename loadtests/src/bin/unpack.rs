//! `npanel-unpack ARCHIVE DEST`: the restore's unpack (`agent::unpack`) alone, into
//! `DEST/home` and `DEST/meta`, for its throughput against `tar -xzf` of the same archive on
//! the same disk (issue 14). Prints what it wrote and MB/s as JSON. Like the restore job it
//! reads the archive's headers first (`scan_first`); `NO_SCAN=1` skips that pass.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use agent::unpack::{unpack, UnpackOptions, UnpackProgress};
use anyhow::{Context, Result};

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(archive), Some(dest)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: npanel-unpack ARCHIVE DEST");
    };
    let (archive, dest) = (PathBuf::from(archive), PathBuf::from(dest));
    let (home, meta) = (dest.join("home"), dest.join("meta"));
    std::fs::create_dir_all(&home).with_context(|| home.display().to_string())?;
    std::fs::create_dir_all(&meta).with_context(|| meta.display().to_string())?;
    let t = Instant::now();
    let u = unpack(
        &archive,
        &home,
        &meta,
        // As the restore job runs it: the headers-only scan first, then the unpack.
        &UnpackOptions {
            scan_first: std::env::var_os("NO_SCAN").is_none(),
            ..UnpackOptions::default()
        },
        &UnpackProgress::default(),
        &AtomicBool::new(false),
        &mut |_, _| {},
    )?;
    let secs = t.elapsed().as_secs_f64();
    let bytes = u.home_bytes + u.meta_bytes;
    println!(
        "{}",
        serde_json::json!({
            "seconds": secs,
            "mb_per_s": bytes as f64 / secs / 1e6,
            "unpacked": u,
        })
    );
    Ok(())
}
