//! A private `XDG_RUNTIME_DIR` for runs where it is unset.
//!
//! When wgpu enumerates Vulkan adapters, Mesa's drivers (lavapipe among
//! them) ask libwayland whether they could present to a display, and
//! libwayland prints `error: XDG_RUNTIME_DIR is invalid or not set in the
//! environment.` to stderr, once per probe, whenever the variable is unset
//! (on servers, in containers, under `sudo`). wgtrain never presents, so it
//! needs no display socket: with the variable pointing at an empty folder
//! that only this process can write to, the probe fails quietly, and no
//! other user can plant a socket for it to connect to. A value the user set
//! (valid or not; libwayland is silent then) is left alone, and the folder
//! is removed when the command ends.
//!
//! This runs in the binary, before any thread starts: changing the
//! environment of a process that has other threads is unsound, which is why
//! the library does not do it.

use std::path::PathBuf;

/// Removes the folder it made, if any, when dropped.
pub struct RuntimeDir(Option<PathBuf>);

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Point `XDG_RUNTIME_DIR` at a new private folder if it is unset or empty.
/// Call it before any thread starts. If the folder cannot be made, nothing
/// changes (the lines may then appear, as before).
pub fn ensure() -> RuntimeDir {
    if !cfg!(target_os = "linux") || std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|v| !v.is_empty()) {
        return RuntimeDir(None);
    }
    let dir = std::env::temp_dir().join(format!("wgtrain-runtime-{}", std::process::id()));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    // `create` fails if the path exists, so the folder is this process's.
    if builder.create(&dir).is_err() {
        return RuntimeDir(None);
    }
    std::env::set_var("XDG_RUNTIME_DIR", &dir);
    RuntimeDir(Some(dir))
}
