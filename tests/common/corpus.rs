//! The committed fuzz corpora: each target's seeds, as the corpus replay tests read them.

use std::path::{Path, PathBuf};

pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Every regular file of a target's corpus as (file name, contents), sorted by name.
pub fn seeds_of(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the fuzz corpus {}: {e}", dir.display()));
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((name, std::fs::read(entry.path()).unwrap()));
    }
    out.sort();
    out
}
