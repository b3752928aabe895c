//! Small file utilities: atomic writes, hashing, and the checks every output path passes
//! before a command starts work. Nothing a user produced is overwritten by accident.

use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` atomically: a temporary sibling file, fsync, then rename. On failure
/// the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::file(parent, e.to_string()))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "not a file path"))?
        .to_string_lossy();
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::file(&tmp, e.to_string()))?;
        f.write_all(bytes)
            .map_err(|e| Error::file(&tmp, e.to_string()))?;
        f.sync_all().map_err(|e| Error::file(&tmp, e.to_string()))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e.to_string()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Serialise `value` as pretty JSON and write it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)?;
    write_atomic(path, &bytes)
}

/// Hex sha256 of a file's bytes, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::file(path, e.to_string()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::file(path, e.to_string()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Read a text data file: UTF-8, with a leading byte-order mark dropped and CRLF line endings
/// read as LF, so neither ends up inside a template, an item or a header. A file that is not
/// UTF-8 is refused, naming the line (and column) of its first invalid byte.
pub fn read_text(path: &Path) -> Result<String> {
    let mut bytes = std::fs::read(path).map_err(|e| Error::file(path, e.to_string()))?;
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        let before = &bytes[..at];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = at
            - before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1)
            + 1;
        Error::line(
            path,
            line,
            format!(
                "not valid UTF-8 (byte 0x{:02X} at column {column}); save the file as UTF-8",
                bytes[at]
            ),
        )
    })?;
    Ok(if text.contains("\r\n") {
        text.replace("\r\n", "\n")
    } else {
        text
    })
}

/// A safetensors file biaslens wrote, parsed from `bytes` (the file at `path`, for errors): the
/// tensors, the raw JSON of its `biaslens` metadata entry, and every metadata entry.
pub fn biaslens_safetensors<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<(
    safetensors::SafeTensors<'a>,
    String,
    std::collections::HashMap<String, String>,
)> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::file(path, format!("not a safetensors file: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::file(path, format!("bad safetensors header: {e}")))?;
    let entries = header.metadata().clone().unwrap_or_default();
    let meta_json = entries
        .get("biaslens")
        .cloned()
        .ok_or_else(|| Error::file(path, "missing `biaslens` metadata"))?;
    Ok((st, meta_json, entries))
}

/// Hex sha256 of bytes in memory.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// One hash of a folder's content: sha256 over its files' paths relative to `dir` (sorted,
/// `/`-separated) and their own sha256s. It names the data a run read without listing every
/// file, and does not depend on where the folder is or the order its files were written.
pub fn sha256_folder(dir: &Path) -> Result<String> {
    // Symlinked folders are followed (a data folder may link its large datasets in), each real
    // folder once, so a link back up the tree cannot recurse forever.
    fn walk(
        dir: &Path,
        root: &Path,
        seen: &mut std::collections::HashSet<PathBuf>,
        out: &mut Vec<(String, PathBuf)>,
    ) -> Result<()> {
        let real = std::fs::canonicalize(dir).map_err(|e| Error::file(dir, e.to_string()))?;
        if !seen.insert(real) {
            return Ok(());
        }
        let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, e.to_string()))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::file(dir, e.to_string()))?.path();
            if path.is_dir() {
                walk(&path, root, seen, out)?;
            } else {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let name: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push((name.join("/"), path));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut Default::default(), &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    for (name, path) in &files {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(sha256_file(path)?.as_bytes());
        h.update([b'\n']);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// `p` made absolute with symlinks of its existing part resolved (the rest appended as given).
pub fn absolute(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::file(p, e.to_string()))?
            .join(p)
    };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = existing
        .canonicalize()
        .map_err(|e| Error::file(existing, e.to_string()))?;
    for name in rest.into_iter().rev() {
        match name.to_str() {
            Some("..") => {
                out.pop();
            }
            Some(".") => {}
            _ => out.push(name),
        }
    }
    Ok(out)
}

/// Refuse an output path whose nearest existing ancestor is not a directory (the write would
/// fail only after the work is done).
fn check_parent(path: &Path, abs: &Path) -> Result<()> {
    match abs.ancestors().skip(1).find(|a| a.exists()) {
        Some(a) if !a.is_dir() => Err(Error::file(
            path,
            format!("cannot be created: {} is not a directory", a.display()),
        )),
        _ => Ok(()),
    }
}

/// Whether two existing paths name the same file (also through hard links).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    false
}

/// Check, before any work, that a command may write the file `path`: it must not be a
/// directory, must not be one of the command's `inputs` (not even with `force`), and an existing
/// file is replaced only with `force`.
pub fn check_output_file(path: &Path, force: bool, inputs: &[&Path]) -> Result<()> {
    if path.is_dir() {
        return Err(Error::file(
            path,
            "is a directory; expected the path of a file to write",
        ));
    }
    let abs = absolute(path)?;
    check_parent(path, &abs)?;
    for input in inputs {
        if absolute(input)? == abs || same_file(input, path) {
            return Err(Error::file(
                path,
                format!(
                    "is an input of this command ({}); refusing to overwrite it, even with --force",
                    input.display()
                ),
            ));
        }
    }
    if path.symlink_metadata().is_ok() && !force {
        return Err(Error::file(
            path,
            "already exists; pass --force to overwrite it",
        ));
    }
    Ok(())
}

/// Check, before any work, that a command may create the directory `out` (or replace it, with
/// `force`). Refused: `out` being, containing or lying inside a `protected` path (the base
/// model); an existing `out` without `force`; and even with `force`, anything but a directory
/// biaslens wrote (one holding one of `markers`), the current directory or one containing it,
/// and a symbolic link.
pub fn check_output_dir(
    out: &Path,
    force: bool,
    markers: &[&str],
    protected: &[&Path],
) -> Result<()> {
    let out_abs = absolute(out)?;
    for p in protected {
        let p_abs = absolute(p)?;
        if p_abs.starts_with(&out_abs) || out_abs.starts_with(&p_abs) {
            return Err(Error::file(
                out,
                format!(
                    "refusing to write into the base model's path {}",
                    p.display()
                ),
            ));
        }
    }
    check_parent(out, &out_abs)?;
    let Ok(meta) = out.symlink_metadata() else {
        return Ok(());
    };
    if !force {
        return Err(Error::file(
            out,
            "already exists; pass --force to replace it (only a directory biaslens wrote is replaced)",
        ));
    }
    if meta.file_type().is_symlink() {
        return Err(Error::file(
            out,
            "is a symbolic link; --force does not replace it",
        ));
    }
    if !meta.is_dir() {
        return Err(Error::file(
            out,
            "exists and is not a directory; --force does not replace it",
        ));
    }
    let cwd = std::env::current_dir()
        .and_then(|d| d.canonicalize())
        .map_err(|e| Error::file(".", e.to_string()))?;
    if cwd.starts_with(&out_abs) {
        return Err(Error::file(
            out,
            "is the current directory or contains it; --force never replaces it",
        ));
    }
    if !markers.iter().any(|m| out.join(m).is_file()) {
        return Err(Error::file(
            out,
            format!(
                "is not a biaslens output (it holds none of {}); --force replaces only a directory \
                 biaslens wrote: remove it yourself or choose another path",
                markers.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The staging directory a new output directory `out_abs` is written into before it is renamed
/// into place: `.NAME.tmp-PID-NANOS` beside it (see [`remove_stale_staging`]).
pub fn staging_dir(out_abs: &Path) -> Result<PathBuf> {
    let parent = out_abs
        .parent()
        .ok_or_else(|| Error::file(out_abs, "has no parent directory"))?;
    let name = out_abs
        .file_name()
        .ok_or_else(|| Error::file(out_abs, "not a directory name"))?
        .to_string_lossy();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(parent.join(format!(".{name}.tmp-{}-{nanos}", std::process::id())))
}

/// Remove the staging directories of `out` (see [`staging_dir`]) left by processes that are no
/// longer running (an interrupted run); returns what was removed. Where liveness cannot be
/// told (no `/proc`), nothing is removed.
pub fn remove_stale_staging(out: &Path) -> Result<Vec<PathBuf>> {
    let abs = absolute(out)?;
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        return Ok(Vec::new());
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|rest| rest.split_once('-'))
            .filter(|(_, nanos)| nanos.parse::<u128>().is_ok())
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id()
            || process_alive(pid) != Some(false)
            || !entry.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        let p = entry.path();
        std::fs::remove_dir_all(&p)
            .map_err(|e| Error::file(&p, format!("removing a stale staging directory: {e}")))?;
        removed.push(p);
    }
    Ok(removed)
}

/// Whether process `pid` runs: known on Linux (`/proc`), `None` elsewhere.
fn process_alive(pid: u32) -> Option<bool> {
    let proc = Path::new("/proc");
    (cfg!(target_os = "linux") && proc.join("self").exists())
        .then(|| proc.join(pid.to_string()).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The folder hash follows content and names, not location or write order; a changed
    /// byte, a renamed file or an extra file changes it.
    #[test]
    fn a_folder_hash_follows_content_not_location() {
        let tmp = tempfile::tempdir().unwrap();
        let write = |root: &Path, files: &[(&str, &str)]| {
            for (name, text) in files {
                let p = root.join(name);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, text).unwrap();
            }
        };
        let (a, b) = (tmp.path().join("a"), tmp.path().join("elsewhere/b"));
        write(&a, &[("x.txt", "1"), ("sub/y.json", "[2]")]);
        write(&b, &[("sub/y.json", "[2]"), ("x.txt", "1")]);
        let h = sha256_folder(&a).unwrap();
        assert_eq!(h, sha256_folder(&b).unwrap());
        write(&b, &[("x.txt", "2")]);
        assert_ne!(h, sha256_folder(&b).unwrap());
        write(&b, &[("x.txt", "1")]);
        assert_eq!(h, sha256_folder(&b).unwrap());
        std::fs::rename(b.join("x.txt"), b.join("z.txt")).unwrap();
        assert_ne!(h, sha256_folder(&b).unwrap());
        std::fs::rename(b.join("z.txt"), b.join("x.txt")).unwrap();
        write(&b, &[("sub/extra.txt", "")]);
        assert_ne!(h, sha256_folder(&b).unwrap());
        assert!(sha256_folder(&tmp.path().join("missing")).is_err());
        // A link back up the tree ends (the linked folder is read once, by its first path).
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&b, b.join("sub/loop")).unwrap();
            let looped = sha256_folder(&b).unwrap();
            std::fs::remove_file(b.join("sub/loop")).unwrap();
            assert_eq!(looped, sha256_folder(&b).unwrap());
        }
    }

    /// A byte-order mark and CRLF endings are not part of the text; a non-UTF-8 file is refused
    /// naming its file and the line of the first bad byte.
    #[test]
    fn read_text_drops_bom_and_crlf_and_names_the_bad_line() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("t.txt");
        std::fs::write(&p, "\u{FEFF}a {}\r\nb\r\n").unwrap();
        assert_eq!(read_text(&p).unwrap(), "a {}\nb\n");
        std::fs::write(&p, b"ok\nfine\ncaf\xe9\n").unwrap();
        let e = read_text(&p).unwrap_err().to_string();
        assert!(e.contains("t.txt:3:"), "{e}");
        assert!(
            e.contains("UTF-8") && e.contains("0xE9") && e.contains("column 4"),
            "{e}"
        );
    }
}
