//! Micro-benchmark of the WHMCS signature check (DESIGN §5 target: < 50 µs): HMAC-SHA256 over
//! `timestamp.METHOD.path?query.body` and a constant-time compare, with one secret in force and
//! with two (during a rotation, the worst case is the old secret matching last). The key lookup
//! (one indexed store read) and the replay cache (one Redis `SET NX`) are I/O, not counted here.
//!
//! `cargo bench -p api --bench whmcs_signature` (release profile; prints ns per check).

use std::hint::black_box;
use std::time::Instant;

fn main() {
    let s1 = "3f".repeat(32);
    let s2 = "a7".repeat(32);
    let ts = "1764500000";
    let path = "/api/whmcs/create-account";
    let body = br#"{"service_id":4711,"username":"shop1","password":"Correct-Horse-9","email":"owner@shop1.example.org","package_id":"basic","domain":"shop1.example.org","nonce":"01JDX7Q4Z6Y8W0V2T4R6P8N0M2"}"#;
    let sig = api::whmcs::sign(&s1, ts, "POST", path, body);
    for (name, secrets) in [
        ("one secret", vec![s1.clone()]),
        (
            "two secrets, the old one matching",
            vec![s2.clone(), s1.clone()],
        ),
        ("no secret matching (bad signature)", vec![s2.clone()]),
    ] {
        let n = 200_000u32;
        // Warm up.
        for _ in 0..10_000 {
            black_box(api::whmcs::verify_signature(
                black_box(&secrets),
                ts,
                "POST",
                path,
                body,
                &sig,
            ));
        }
        let t = Instant::now();
        let mut ok = 0u32;
        for _ in 0..n {
            ok += u32::from(api::whmcs::verify_signature(
                black_box(&secrets),
                black_box(ts),
                "POST",
                black_box(path),
                black_box(body),
                black_box(&sig),
            ));
        }
        let per = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!("signature check, {name}: {per:.0} ns ({ok} of {n} accepted)");
    }
}
