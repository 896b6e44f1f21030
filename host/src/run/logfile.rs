//! The decision log's optional file (`log.file` in `keel.yaml`), beside standard output:
//! appended to, rotated by size at a line boundary (`<file>` → `<file>.1` → … →
//! `<file>.<keep>`, the oldest dropped), created `0600` like the state (its lines are
//! redacted, but they still describe the fleet).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file that rotates when the next line would take it past `max_bytes`.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: File,
    size: u64,
    /// Whether the last byte written ended a line: rotation only happens there.
    at_line_start: bool,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// `path` with `.n` appended (`decisions.jsonl.2`).
fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl RotatingFile {
    /// Opens (creating it) `path` for appending; it rotates past `max_bytes` (at least one
    /// line is always written to a file), keeping `keep` older files.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<RotatingFile> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep: keep.max(1),
            file,
            size,
            at_line_start: true,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let _ = std::fs::remove_file(numbered(&self.path, self.keep));
        for n in (1..self.keep).rev() {
            let from = numbered(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, numbered(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Several lines at once go in one write while they fit; past the limit, one line at
        // a time (the caller's `write_all` comes back for the rest), so that each line is
        // checked against the limit where it starts.
        let buf = if self.size.saturating_add(buf.len() as u64) > self.max_bytes {
            match buf.iter().position(|b| *b == b'\n') {
                Some(end) => &buf[..=end],
                None => buf,
            }
        } else {
            buf
        };
        if self.at_line_start
            && self.size > 0
            && self.size.saturating_add(buf.len() as u64) > self.max_bytes
        {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size = self.size.saturating_add(n as u64);
        if n > 0 {
            self.at_line_start = buf[n - 1] == b'\n';
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Standard output and, when configured, the file: every write goes to both (a failure of
/// the file does not stop the lines on standard output).
pub struct Tee<A: Write, B: Write> {
    /// Standard output.
    pub first: A,
    /// The file.
    pub second: Option<B>,
}

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The file gets every line even when standard output fails (a batch's lines come
        // in one write: an error here must not cost the file the rest of them).
        let first = self.first.write_all(buf);
        if let Some(f) = &mut self.second {
            let _ = f.write_all(buf);
        }
        first.map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(f) = &mut self.second {
            let _ = f.flush();
        }
        self.first.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_rotate_at_their_boundary_and_the_oldest_file_goes() -> std::io::Result<()> {
        // A line in two writes, as `writeln!` may make it, and several lines in one write,
        // as the host writes a batch's: never split across files.
        lines_rotate(false)?;
        lines_rotate(true)
    }

    fn lines_rotate(several_at_once: bool) -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("decisions.jsonl");
        let mut f = RotatingFile::open(&path, 100, 2)?;
        let mut written = Vec::new();
        let mut pending = String::new();
        for i in 0..20 {
            let line = format!("{{\"n\":{i:02},\"pad\":\"{}\"}}", "x".repeat(20));
            if several_at_once {
                pending.push_str(&line);
                pending.push('\n');
                if i % 3 == 2 {
                    f.write_all(std::mem::take(&mut pending).as_bytes())?;
                }
            } else {
                write!(f, "{line}")?;
                writeln!(f)?;
            }
            written.push(line);
        }
        f.write_all(pending.as_bytes())?;
        f.flush()?;
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let (now, one, two) = (
            read(&path),
            read(&numbered(&path, 1)),
            read(&numbered(&path, 2)),
        );
        assert!(!numbered(&path, 3).exists(), "keep 2: no third file");
        for text in [&now, &one, &two] {
            assert!(text.len() <= 100, "{} bytes", text.len());
            assert!(text.ends_with('\n'));
            for l in text.lines() {
                assert!(written.contains(&l.to_string()), "a split line: {l}");
            }
        }
        // The newest lines, in order, across the files (oldest file first).
        let kept: Vec<String> = [two, one, now]
            .iter()
            .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
            .collect();
        assert_eq!(kept[..], written[written.len() - kept.len()..]);
        assert!(kept.len() >= 6);
        // Reopened, it appends and keeps counting from the file's size.
        let before = read(&path).len();
        let mut f = RotatingFile::open(&path, 100, 2)?;
        writeln!(f, "x")?;
        assert!(read(&path).len() == before + 2 || read(&path) == "x\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        Ok(())
    }

    #[test]
    fn the_file_gets_every_line_when_standard_output_fails() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("closed"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut file = Vec::new();
        let mut tee = Tee {
            first: Closed,
            second: Some(&mut file),
        };
        assert!(tee.write_all(b"a\nb\n").is_err());
        assert_eq!(file, b"a\nb\n");
    }

    #[test]
    fn a_line_longer_than_the_limit_still_gets_a_file() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log");
        let mut f = RotatingFile::open(&path, 10, 3)?;
        writeln!(f, "{}", "y".repeat(50))?;
        writeln!(f, "{}", "z".repeat(50))?;
        assert_eq!(
            std::fs::read_to_string(&path)?,
            format!("{}\n", "z".repeat(50))
        );
        assert_eq!(
            std::fs::read_to_string(numbered(&path, 1))?,
            format!("{}\n", "y".repeat(50))
        );
        Ok(())
    }
}
