//! Build facts for `tollgate_build_info`: the compiler's version and the git commit the binary
//! was built from. A tree that is not a git checkout of this package (a release tarball, even
//! one unpacked inside another repository), or a machine without git, says `unknown`;
//! `TOLLGATE_COMMIT` in the build's environment wins, for packagers who build from a tarball
//! and know the commit. The script reruns only when HEAD or the branch it names moves.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TOLLGATE_COMMIT");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    // `rustc 1.89.0 (29483883e 2025-08-04)`: the version is the second word.
    let version = run(Command::new(rustc).arg("--version"))
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TOLLGATE_BUILD_RUSTC={version}");
    let commit = std::env::var("TOLLGATE_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TOLLGATE_BUILD_COMMIT={}", commit.trim());
}

/// The short hash of HEAD when this package's directory is the top of a git work tree, and
/// the files whose change means a new commit (HEAD, the branch's ref, packed refs) told to
/// cargo. Worktrees keep HEAD and refs in different places; `git rev-parse --git-path` knows.
fn git_commit() -> Option<String> {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let top = PathBuf::from(git(&dir, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    let git_path = |name: &str| git(&dir, &["rev-parse", "--git-path", name]).map(|p| dir.join(p));
    // A path that does not exist would make cargo rerun this script on every build.
    let watch = |path: &Path| {
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    };
    for name in ["HEAD", "packed-refs"] {
        if let Some(path) = git_path(name) {
            watch(&path);
        }
    }
    let branch = git(&dir, &["symbolic-ref", "-q", "HEAD"]);
    if let Some(path) = branch.and_then(|b| git_path(&b)) {
        // A branch kept only in packed-refs gets a file of its own at its next commit: the
        // directory it will appear in changes then.
        match path.parent() {
            Some(parent) if !path.exists() => watch(parent),
            _ => watch(&path),
        }
    }
    git(&dir, &["rev-parse", "--short=12", "HEAD"])
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    run(Command::new("git").current_dir(dir).args(args))
}

/// The command's standard output, trimmed, when it succeeds and says something.
fn run(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}
