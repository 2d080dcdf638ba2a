//! JSON helpers for plugins that work on JSON values.
//!
//! Fields are named by dotted paths (`user.email`, `items.0.sku`): the form
//! operators write in pipeline configs. A numeric segment indexes an array.

use serde_json::{Map, Value};

/// A dotted path into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    segments: Vec<String>,
}

impl Path {
    /// Parses `a.b.c`; an empty path or an empty segment is an error that
    /// names the path.
    pub fn parse(path: &str) -> Result<Path, String> {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if path.is_empty() || segments.iter().any(String::is_empty) {
            return Err(format!(
                "invalid JSON field path {path:?}: use dotted names like `user.email`"
            ));
        }
        Ok(Path { segments })
    }

    /// The value at this path, if present.
    pub fn get<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        self.segments.iter().try_fold(root, step)
    }

    /// The value at this path, mutable, if present.
    pub fn get_mut<'v>(&self, root: &'v mut Value) -> Option<&'v mut Value> {
        self.segments.iter().try_fold(root, step_mut)
    }

    /// Removes and returns the value at this path.
    pub fn remove(&self, root: &mut Value) -> Option<Value> {
        let (last, parents) = self.segments.split_last()?;
        let parent = parents.iter().try_fold(root, step_mut)?;
        match parent {
            Value::Object(map) => map.remove(last),
            Value::Array(items) => {
                let i: usize = last.parse().ok()?;
                (i < items.len()).then(|| items.remove(i))
            }
            _ => None,
        }
    }

    /// Sets the value at this path, creating intermediate objects. Fails
    /// (returning the value back) when a parent exists but is not an object.
    pub fn set(&self, root: &mut Value, value: Value) -> Result<(), Value> {
        let Some((last, parents)) = self.segments.split_last() else {
            return Err(value);
        };
        let mut node = root;
        for seg in parents {
            let Value::Object(map) = node else {
                return Err(value);
            };
            node = map
                .entry(seg.clone())
                .or_insert_with(|| Value::Object(Map::new()));
        }
        match node {
            Value::Object(map) => {
                map.insert(last.clone(), value);
                Ok(())
            }
            _ => Err(value),
        }
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

fn step<'v>(node: &'v Value, seg: &String) -> Option<&'v Value> {
    match node {
        Value::Object(map) => map.get(seg),
        Value::Array(items) => items.get(seg.parse::<usize>().ok()?),
        _ => None,
    }
}

fn step_mut<'v>(node: &'v mut Value, seg: &String) -> Option<&'v mut Value> {
    match node {
        Value::Object(map) => map.get_mut(seg),
        Value::Array(items) => items.get_mut(seg.parse::<usize>().ok()?),
        _ => None,
    }
}

/// A JSON value as plain text for comparisons with configured strings:
/// strings without quotes, everything else as JSON (`42`, `true`, `null`).
pub fn as_text(value: &Value) -> std::borrow::Cow<'_, str> {
    match value {
        Value::String(s) => s.as_str().into(),
        other => other.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn get_set_remove_nested_paths() {
        let mut doc = json!({"user": {"email": "a@b.c"}, "items": [{"sku": "x"}]});
        let email = Path::parse("user.email").expect("valid");
        assert_eq!(email.get(&doc), Some(&json!("a@b.c")));
        assert_eq!(
            Path::parse("items.0.sku").expect("valid").get(&doc),
            Some(&json!("x"))
        );
        Path::parse("meta.source")
            .expect("valid")
            .set(&mut doc, json!("kwasm"))
            .expect("settable");
        assert_eq!(doc["meta"]["source"], json!("kwasm"));
        assert_eq!(email.remove(&mut doc), Some(json!("a@b.c")));
        assert_eq!(doc["user"], json!({}));
    }

    #[test]
    fn rejects_empty_segments() {
        assert!(Path::parse("").is_err());
        assert!(Path::parse("a..b").is_err());
    }

    #[test]
    fn set_through_a_scalar_fails() {
        let mut doc = json!({"a": 1});
        assert!(
            Path::parse("a.b")
                .expect("valid")
                .set(&mut doc, json!(2))
                .is_err()
        );
    }
}
