use std::collections::BTreeMap;
use std::str::FromStr;

/// The plugin's configuration: string keys and values set on the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: BTreeMap<String, String>,
}

impl Config {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// The value of `key`, or an error message naming the missing key.
    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("missing required config key `{key}`"))
    }

    /// The value of `key` parsed as `T`; `Ok(None)` when unset, an error
    /// naming the key when it does not parse.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|e| format!("config key `{key}`: cannot parse {v:?}: {e}"))
            })
            .transpose()
    }

    /// A comma-separated list under `key`, trimmed, empty items skipped.
    pub fn list(&self, key: &str) -> Vec<&str> {
        self.get(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every key and value, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Rejects keys outside `known`: a typo in a pipeline's plugin config
    /// should fail the deploy, not be silently ignored.
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), String> {
        match self.entries.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(format!(
                "unknown config key `{k}` (known keys: {})",
                known.join(", ")
            )),
            None => Ok(()),
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Config {
            entries: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}
