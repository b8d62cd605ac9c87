//! The fuzz targets' seeds and every past finding (`fuzz/regressions/<target>/`), replayed
//! through the same entry points on every test run. A crash the fuzzer finds is copied
//! there (from `fuzz/artifacts/<target>/`) once fixed.

use std::path::{Path, PathBuf};

use cedille_gateway::fuzzing;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_file() && !path.ends_with(".keep") {
                let data = std::fs::read(&path).unwrap();
                out.push((path, data));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn manifest_inputs_replay() {
    let all = inputs("manifest");
    assert!(!all.is_empty(), "no seeds found");
    for (path, data) in all {
        eprintln!("{}", path.display());
        fuzzing::manifest(&data);
    }
}

#[test]
fn request_inputs_replay() {
    let all = inputs("request");
    assert!(!all.is_empty(), "no seeds found");
    for (path, data) in &all {
        eprintln!("{}", path.display());
        fuzzing::request(data);
    }
    // The harness serves real routes: the seeds get the answers those routes give.
    let answer = |name: &str| -> String {
        let (_, data) = all
            .iter()
            .find(|(p, _)| p.ends_with(name))
            .unwrap_or_else(|| panic!("seed {name}"));
        String::from_utf8_lossy(&fuzzing::request(data)).into_owned()
    };
    let redirect = answer("h1-redirect");
    assert!(redirect.starts_with("HTTP/1.1 301"), "{redirect}");
    assert!(
        redirect.contains("location: https://r.example.com:8443/redirect"),
        "{redirect}"
    );
    let prefix = answer("h1-prefix-redirect");
    assert!(prefix.starts_with("HTTP/1.1 302"), "{prefix}");
    assert!(prefix.contains("location: http://x/new/p"), "{prefix}");
    // The backend refuses connections: the matched route's answer is a gateway error.
    let matched = answer("h1-match");
    assert!(matched.starts_with("HTTP/1.1 50"), "{matched}");
    let missing = answer("h1-upgrade");
    assert!(missing.starts_with("HTTP/1.1 500"), "{missing}");
    // HTTP/2: the server's frames include a response HEADERS frame on stream 1.
    let (_, h2) = all.iter().find(|(p, _)| p.ends_with("h2-get")).unwrap();
    let out = fuzzing::request(h2);
    let mut frames = Vec::new();
    let mut rest = &out[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        frames.push((rest[3], stream));
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(
        frames.contains(&(0x1, 1)),
        "no response HEADERS on stream 1: {frames:?}"
    );
}
