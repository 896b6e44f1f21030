//! YAML documents as JSON values with the position of every node: for configuration files
//! (such as the host's `keel.yaml`) that want the same file:line:column diagnostics, size
//! limits and alias/nesting protection as policy files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use saphyr::{MarkedYaml, YamlData};
use serde_json::Value;

use crate::diag::{Diagnostic, Pos};
use crate::policy::{pos, scalar_str, with_yaml_doc, LoadError, MAX_POLICY_DEPTH};

/// A YAML document as JSON, with positions.
#[derive(Debug, Clone)]
pub struct YamlDoc {
    file: PathBuf,
    /// The document.
    pub value: Value,
    positions: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

impl YamlDoc {
    /// The 1-based (line, column) of the node at JSON pointer `ptr` (`""` for the root,
    /// `/sources/0/url`), falling back to the nearest ancestor that has one.
    pub fn position(&self, ptr: &str) -> (usize, usize) {
        let mut p = ptr.to_string();
        loop {
            if let Some(pos) = self.positions.get(&p) {
                return (pos.line, pos.column);
            }
            match p.rfind('/') {
                Some(i) => p.truncate(i),
                None => return (0, 0),
            }
        }
    }

    /// A diagnostic at the key of the map entry `ptr` (falling back to its value).
    pub fn key_diagnostic(&self, ptr: &str, message: impl Into<String>) -> Diagnostic {
        match self.keys.get(ptr) {
            Some(p) => Diagnostic::new(&self.file, *p, message),
            None => self.diagnostic(ptr, message),
        }
    }

    /// A diagnostic at the node `ptr`.
    pub fn diagnostic(&self, ptr: &str, message: impl Into<String>) -> Diagnostic {
        let (line, column) = self.position(ptr);
        Diagnostic::new(&self.file, Pos { line, column }, message)
    }

    /// The file the document came from.
    pub fn file(&self) -> &Path {
        &self.file
    }
}

/// Loads one YAML document. Errors (size, UTF-8, syntax, aliases, nesting) carry positions.
pub fn load(file: &Path, bytes: &[u8]) -> Result<YamlDoc, LoadError> {
    let mut diags = Vec::new();
    let doc = with_yaml_doc(file, bytes, &mut diags, "file", "a map", |_, doc| {
        let mut positions = HashMap::new();
        let mut keys = HashMap::new();
        let value = convert(doc, String::new(), &mut positions, &mut keys, 0);
        (value, positions, keys)
    });
    match doc {
        Some((value, positions, keys)) if diags.is_empty() => Ok(YamlDoc {
            file: file.to_path_buf(),
            value,
            positions,
            keys,
        }),
        _ => Err(LoadError::new(diags)),
    }
}

fn convert(
    n: &MarkedYaml<'_>,
    ptr: String,
    out: &mut HashMap<String, Pos>,
    keys: &mut HashMap<String, Pos>,
    depth: usize,
) -> Value {
    out.insert(ptr.clone(), pos(n));
    if depth > MAX_POLICY_DEPTH {
        return Value::Null;
    }
    match &n.data {
        YamlData::Sequence(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| convert(v, format!("{ptr}/{i}"), out, keys, depth + 1))
                .collect(),
        ),
        YamlData::Mapping(m) => {
            let mut obj = serde_json::Map::new();
            for (k, v) in m.iter() {
                let key = scalar_str(k).map(|s| s.into_owned()).unwrap_or_default();
                let child = format!("{ptr}/{}", key.replace('~', "~0").replace('/', "~1"));
                keys.insert(child.clone(), pos(k));
                let value = convert(v, child, out, keys, depth + 1);
                obj.insert(key, value);
            }
            Value::Object(obj)
        }
        YamlData::Value(saphyr::Scalar::Integer(i)) => Value::from(*i),
        YamlData::Value(saphyr::Scalar::FloatingPoint(f)) => {
            serde_json::Number::from_f64(f.0).map_or(Value::Null, Value::Number)
        }
        YamlData::Value(saphyr::Scalar::Boolean(b)) => Value::Bool(*b),
        YamlData::Value(saphyr::Scalar::Null) => Value::Null,
        YamlData::Tagged(_, inner) => convert(inner, ptr, out, keys, depth + 1),
        _ => scalar_str(n).map_or(Value::Null, |s| Value::String(s.into_owned())),
    }
}
