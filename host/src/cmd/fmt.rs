//! `keel fmt [PATH...] [--check]`: policy and test files in one layout, comments kept.
//!
//! The formatter works on lines, so every comment stays where it was written: line endings
//! become `\n`, trailing whitespace goes (except inside block scalars, where it is content),
//! runs of blank lines become one, the file starts with no blank line and ends with one
//! newline, and the keys of each policy in `policies:` take the order `keel check` documents
//! (`name`, `description`, `on`, `when`, `action`, `priority`, `reason`, `reason_expr`,
//! `params`, `plugin`), each key moving with its comments and nested lines. A file is
//! rewritten only when the result parses to exactly the same document; otherwise it is
//! refused and left as it is. Formatting a formatted file changes nothing.

use std::path::{Path, PathBuf};

// The keys of a policy in their documented order: the engine's list, so a new key is ordered too.
use keel_engine::POLICY_KEYS;

use crate::{render, Exit};

/// Rewrite policy and test files in Keel's layout (comments kept), or check that they are.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel fmt policies/\n  keel fmt --check policies/        # in CI: exit 1 and list the files that would change\n  keel fmt team/drain.yaml\n\nWithout PATH, formats the current directory. Directories are walked recursively; only YAML\nfiles with top-level `policies:` or `cases:` are touched (others are skipped). A file that\ndoes not parse is reported with its positions and left alone; a file whose meaning the\nlayout would change (this should not happen) is refused and left alone.\n\nExit codes: 0 formatted (or, with --check, nothing to change), 1 (--check) files would\nchange, 2 a path that does not exist or a file that cannot be written, 3 a file that does\nnot parse or cannot be formatted safely."
)]
pub struct Args {
    /// Policy or test files, or directories of them (default: the current directory).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Change nothing: list the files that are not formatted and exit 1 if there are any.
    #[arg(long)]
    pub check: bool,
}

/// Runs `keel fmt`.
pub fn run(args: Args) -> Exit {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    for p in &paths {
        if let Err(e) = super::require_path("PATH", p) {
            return e;
        }
    }
    let mut files = Vec::new();
    for p in &paths {
        if p.is_dir() {
            walk(p, &mut files);
        } else {
            files.push(p.clone());
        }
    }
    let (mut changed, mut invalid, mut unwritable) = (0, 0, 0);
    for file in &files {
        let shown = keel_engine::escape(&file.display().to_string());
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: {shown}: {e}");
                unwritable += 1;
                continue;
            }
        };
        let original = match keel_engine::yaml::load(file, &bytes) {
            Ok(doc) => doc,
            Err(e) => {
                let _ = render::diagnostics(&mut std::io::stderr().lock(), &e);
                invalid += 1;
                continue;
            }
        };
        let is_keel_file = original
            .value
            .as_object()
            .is_some_and(|m| m.contains_key("policies") || m.contains_key("cases"));
        if !is_keel_file {
            if !found_by_walking(file, &paths) {
                eprintln!("note: {shown}: not a policy or test file (no `policies:` or `cases:`), skipped");
            }
            continue;
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue; // yaml::load accepted it, so it is UTF-8; never reached
        };
        let formatted = format(text);
        if formatted == text {
            continue;
        }
        match keel_engine::yaml::load(file, formatted.as_bytes()) {
            Ok(doc) if doc.value == original.value => {}
            _ => {
                eprintln!(
                    "error: {shown}: cannot be formatted without changing what it says; left as it is"
                );
                invalid += 1;
                continue;
            }
        }
        changed += 1;
        if args.check {
            println!("{shown}");
            continue;
        }
        match write_in_place(file, formatted.as_bytes()) {
            Ok(()) => println!("formatted {shown}"),
            Err(e) => {
                eprintln!("error: {shown}: {e}");
                unwritable += 1;
            }
        }
    }
    if invalid > 0 {
        Exit::Invalid
    } else if unwritable > 0 {
        Exit::Usage
    } else if args.check && changed > 0 {
        eprintln!("{changed} file(s) not formatted: run `keel fmt` on them");
        Exit::Failed
    } else {
        Exit::Ok
    }
}

/// Whether `file` was found by walking a directory of `paths` rather than named (then a skip
/// is not worth a note).
fn found_by_walking(file: &Path, paths: &[PathBuf]) -> bool {
    !paths.iter().any(|p| p == file)
}

/// The YAML files under `dir`, recursively, in name order (hidden entries and `target/`
/// skipped).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name == "target" || name == "node_modules" {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            walk(&p, out);
        } else if meta.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            out.push(p);
        }
    }
}

/// Replaces `path` by `bytes` through a temporary file beside it, keeping its permissions.
/// The temporary file is created new (`O_EXCL`: never through a file or symlink already
/// there, which someone able to write the directory could have planted to redirect the write
/// and the permissions elsewhere), written and given its permissions through its handle.
fn write_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let perms = std::fs::metadata(path)?.permissions();
    let name = path.file_name().unwrap_or_default();
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".fmt{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.set_permissions(perms))
        .and_then(|()| file.sync_all());
    drop(file);
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

// ---- the layout ---------------------------------------------------------------------------

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Whether `line` (a mapping entry or sequence item) opens a block scalar: its value is `|`
/// or `>`, with optional chomping and indentation indicators and an optional comment.
fn opens_block_scalar(line: &str) -> bool {
    let code = match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    };
    let code = code.trim_end();
    let Some(value) = code
        .rsplit_once(": ")
        .map(|(_, v)| v)
        .or_else(|| code.strip_prefix("- "))
        .or_else(|| code.trim_start().strip_prefix("- "))
    else {
        return false;
    };
    let mut chars = value.trim().chars();
    matches!(chars.next(), Some('|' | '>')) && chars.all(|c| matches!(c, '+' | '-' | '1'..='9'))
}

/// One line of the file: its text, and whether it is inside a block scalar (left as it is).
struct Line {
    text: String,
    content: bool,
}

/// Splits the text into lines, marking block-scalar content.
fn lines(text: &str) -> Vec<Line> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    // The indentation of the line that opened the block scalar we are in.
    let mut block: Option<usize> = None;
    for raw in text.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(opener) = block {
            if raw.trim().is_empty() || indent_of(raw) > opener {
                out.push(Line {
                    text: raw.to_string(),
                    content: true,
                });
                continue;
            }
            block = None;
        }
        if opens_block_scalar(raw) {
            block = Some(indent_of(raw));
        }
        out.push(Line {
            text: raw.to_string(),
            content: false,
        });
    }
    // Blank lines that end a block scalar belong to the layout (they are not its content
    // unless `+` keeps them, and a formatted file ends with one newline anyway).
    for l in out.iter_mut().rev() {
        if !l.content || !l.text.trim().is_empty() {
            break;
        }
        l.content = false;
    }
    out
}

/// The file in Keel's layout.
pub fn format(text: &str) -> String {
    let mut kept: Vec<Line> = Vec::new();
    for mut l in lines(text) {
        if !l.content {
            l.text.truncate(l.text.trim_end().len());
            let blank = l.text.is_empty();
            let after_blank = kept.last().is_none_or(|p| !p.content && p.text.is_empty());
            if blank && after_blank {
                continue;
            }
        }
        kept.push(l);
    }
    while kept.last().is_some_and(|l| !l.content && l.text.is_empty()) {
        kept.pop();
    }
    let kept = order_policies(kept);
    let mut out = String::with_capacity(text.len());
    for l in kept {
        out.push_str(&l.text);
        out.push('\n');
    }
    out
}

/// Puts the keys of each block-style policy under a top-level `policies:` in
/// [`POLICY_KEYS`] order (unknown keys after them, in their order).
fn order_policies(lines: Vec<Line>) -> Vec<Line> {
    let Some(start) = lines
        .iter()
        .position(|l| !l.content && l.text.trim_end() == "policies:")
    else {
        return lines;
    };
    // The section ends at the next top-level line that is not a comment or a sequence item.
    let end = lines[start + 1..]
        .iter()
        .position(|l| {
            !l.content
                && !l.text.is_empty()
                && indent_of(&l.text) == 0
                && !l.text.starts_with('#')
                && !l.text.starts_with("- ")
        })
        .map_or(lines.len(), |i| start + 1 + i);
    let mut lines = lines;
    let section: Vec<Line> = lines.drain(start + 1..end).collect();
    // Items: the lines from one `- ` at the items' indentation to the next.
    let item_indent = section
        .iter()
        .find(|l| !l.content && l.text.trim_start().starts_with("- "))
        .map(|l| indent_of(&l.text));
    let Some(item_indent) = item_indent else {
        lines.splice(start + 1..start + 1, section);
        return lines;
    };
    let mut items: Vec<Vec<Line>> = vec![Vec::new()];
    for l in section {
        let starts_item = !l.content
            && indent_of(&l.text) == item_indent
            && l.text[item_indent..].starts_with("- ");
        if starts_item {
            // Comments and blank lines just before the item belong to it.
            let prev = items.last_mut().map(std::mem::take).unwrap_or_default();
            let split = prev
                .iter()
                .rposition(|p| {
                    p.content || !(p.text.is_empty() || p.text.trim_start().starts_with('#'))
                })
                .map_or(0, |i| i + 1);
            let mut prev = prev;
            let lead = prev.split_off(split);
            if let Some(last) = items.last_mut() {
                *last = prev;
            }
            items.push(lead);
        }
        if let Some(last) = items.last_mut() {
            last.push(l);
        }
    }
    let mut section = Vec::new();
    for item in items {
        section.extend(order_item(item, item_indent));
    }
    lines.splice(start + 1..start + 1, section);
    lines
}

/// One policy's lines (leading comments, `- first: …`, the other keys) with its keys in
/// order; returned as it is when it is not a plain block mapping.
fn order_item(item: Vec<Line>, item_indent: usize) -> Vec<Line> {
    let Some(dash) = item
        .iter()
        .position(|l| !l.content && l.text.trim_start().starts_with("- "))
    else {
        return item;
    };
    let key_indent = item_indent + 2;
    let key_of = |l: &Line, first: bool| -> Option<String> {
        if l.content {
            return None;
        }
        let body = if first {
            l.text.get(key_indent..)?
        } else {
            if indent_of(&l.text) != key_indent {
                return None;
            }
            &l.text[key_indent..]
        };
        let (key, _) = body.split_once(':')?;
        key.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            .then(|| key.to_string())
            .filter(|k| !k.is_empty())
    };
    let Some(first_key) = key_of(&item[dash], true) else {
        return item; // `- {name: …}` or another shape: left alone
    };
    let mut item = item;
    let mut chunks: Vec<(String, Vec<Line>)> = Vec::new();
    let body: Vec<Line> = item.split_off(dash);
    let lead = item;
    let mut pending: Vec<Line> = Vec::new();
    for (i, mut l) in body.into_iter().enumerate() {
        if i == 0 {
            // `- name: x` → `  name: x`: the dash goes back on whichever key ends up first.
            l.text.replace_range(item_indent..item_indent + 1, " ");
            chunks.push((first_key.clone(), vec![l]));
            continue;
        }
        if let Some(k) = key_of(&l, false) {
            let mut lines = std::mem::take(&mut pending);
            lines.push(l);
            chunks.push((k, lines));
            continue;
        }
        let comment_or_blank = !l.content
            && (l.text.is_empty()
                || indent_of(&l.text) <= key_indent && l.text.trim_start().starts_with('#'));
        if comment_or_blank {
            pending.push(l);
        } else if let Some(last) = chunks.last_mut() {
            last.1.append(&mut pending);
            last.1.push(l);
        }
    }
    let rank = |k: &str| {
        POLICY_KEYS
            .iter()
            .position(|p| *p == k)
            .unwrap_or(POLICY_KEYS.len())
    };
    // Duplicate keys would make the document invalid anyway; leave such an item alone.
    let mut seen: Vec<&str> = chunks.iter().map(|(k, _)| k.as_str()).collect();
    seen.sort_unstable();
    let duplicate = seen.windows(2).any(|w| w[0] == w[1]);
    let mut out = lead;
    if duplicate {
        for (_, ls) in chunks {
            out.extend(ls);
        }
    } else {
        chunks.sort_by_key(|(k, _)| rank(k)); // stable: unknown keys keep their order
        for (_, ls) in chunks {
            out.extend(ls);
        }
    }
    out.extend(pending);
    // The first key line (after its own comments) takes the dash.
    if let Some(l) = out
        .iter_mut()
        .find(|l| !(l.content || l.text.is_empty() || l.text.trim_start().starts_with('#')))
    {
        l.text.replace_range(item_indent..item_indent + 1, "-");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// The temporary file is created new: a symbolic link planted under its name fails the
    /// write, and neither the link's target nor the file is touched.
    #[cfg(unix)]
    #[test]
    fn the_rewrite_never_follows_a_planted_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("p.yaml");
        std::fs::write(&file, "policies: []\n").unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "mine\n").unwrap();
        let planted = d.path().join(format!(".p.yaml.fmt{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let err = write_in_place(&file, b"policies: []\n# new\n").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "mine\n");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "policies: []\n");
        // Without it, the file is rewritten and keeps its mode.
        std::fs::remove_file(&planted).unwrap();
        write_in_place(&file, b"policies: []\n# new\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "policies: []\n# new\n"
        );
        assert!(!planted.exists());
    }

    #[test]
    fn whitespace_and_blank_lines() {
        let text = "\n\n# top\r\nversion: 1   \npolicies:\n\n\n\n  - name: a\t\n    on: [maintenance]\n    action: drain\n\n\n";
        assert_eq!(
            format(text),
            "# top\nversion: 1\npolicies:\n\n  - name: a\n    on: [maintenance]\n    action: drain\n"
        );
    }

    #[test]
    fn block_scalars_keep_their_content() {
        let text =
            "policies:\n  - name: a\n    when: |\n      a  \n\n\n      b\n    action: drain\n";
        assert_eq!(format(text), text);
    }

    #[test]
    fn keys_take_their_order_with_their_comments() {
        let text = "policies:\n  # the first\n  - action: drain # why\n    # the name\n    name: a\n    params:\n      deadline_s: 60\n    on: [maintenance]\n  - name: b\n    on: [health]\n    action: none\n";
        let want = "policies:\n  # the first\n    # the name\n  - name: a\n    on: [maintenance]\n    action: drain # why\n    params:\n      deadline_s: 60\n  - name: b\n    on: [health]\n    action: none\n";
        let got = format(text);
        assert_eq!(got, want, "\n{got}");
        assert_eq!(format(&got), got, "idempotent");
    }

    #[test]
    fn flow_items_are_left_alone() {
        let text = "policies:\n  - {action: drain, name: a, on: [maintenance]}\n";
        assert_eq!(format(text), text);
    }

    /// Every policy and test file of the repository: formatting keeps what it says and a
    /// second pass changes nothing.
    #[test]
    fn the_repository_files_keep_their_meaning_and_are_stable() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for dir in [
            "policies",
            "wasm-plugins/examples",
            "engine/tests",
            "host/tests",
            "host/examples",
        ] {
            walk(&root.join(dir), &mut files);
        }
        let mut checked = 0;
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            let Ok(doc) = keel_engine::yaml::load(&f, &bytes) else {
                continue;
            };
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            let once = format(text);
            let again = keel_engine::yaml::load(&f, once.as_bytes())
                .unwrap_or_else(|e| panic!("{}: {e}\n{once}", f.display()));
            assert_eq!(again.value, doc.value, "{}", f.display());
            assert_eq!(format(&once), once, "{} is not stable", f.display());
            checked += 1;
        }
        assert!(checked > 50, "{checked} files");
    }
}
