//! Reading the files a config consists of — the config itself and `admin.token_file` — with
//! a bound on what reading them can cost. Only regular files are read: a device such as
//! `/dev/zero` never ends, a FIFO blocks the opener until a writer comes (forever, for
//! `check`), and a directory is a mistake. The file type is checked before the file is
//! opened, the open itself cannot block (`O_NONBLOCK`, which a regular file ignores), the
//! type is checked again on the open file (the path may have been swapped in between), and
//! the read stops one byte past the limit whatever the metadata said.
//!
//! It knows nothing of YAML or tokens: it returns text or a one-line reason.

use std::fs::{File, FileType, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The whole text of the regular file at `path`, at most `limit` bytes of UTF-8; otherwise a
/// one-line reason such as `not a regular file but a FIFO` (without the path, which the
/// caller puts in front).
pub(crate) fn bounded_text(path: &Path, limit: u64) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    regular(meta.file_type())?;
    within(meta.len(), limit)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    regular(meta.file_type())?;
    read_at_most(file, limit)
}

fn read_at_most(file: File, limit: u64) -> Result<String, String> {
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    within(bytes.len() as u64, limit)?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn regular(kind: FileType) -> Result<(), String> {
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "something else"
    };
    Err(format!("not a regular file but {what}"))
}

fn within(len: u64, limit: u64) -> Result<(), String> {
    if len > limit {
        return Err(format!(
            "larger than the limit of {limit} bytes ({} KiB)",
            limit / 1024
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "hello\n").unwrap();
        assert_eq!(bounded_text(&path, 6).as_deref(), Ok("hello\n"));
        assert!(bounded_text(&path, 5).unwrap_err().contains("larger than"));
    }

    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let e = bounded_text(Path::new("/dev/zero"), 4096).unwrap_err();
        assert!(e.contains("character device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = bounded_text(dir.path(), 4096).unwrap_err();
        assert!(e.contains("directory"), "{e}");
        let e = bounded_text(&dir.path().join("missing"), 4096).unwrap_err();
        assert!(e.starts_with("cannot read:"), "{e}");
    }

    #[test]
    fn refuses_bytes_that_are_not_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"ok\xff").unwrap();
        let e = bounded_text(&path, 100).unwrap_err();
        assert!(e.contains("offset 2"), "{e}");
    }
}
