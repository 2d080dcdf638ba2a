//! Environment overrides of the config file (12-factor): what a pod sets per
//! instance (its id from the downward API, secrets from a Secret) without a
//! config file per pod. Precedence: environment over file over defaults.
//!
//! | variable | field |
//! | --- | --- |
//! | `KWASM_HOST_ID` | `host.id` |
//! | `KWASM_STATIC_MEMBERSHIP` | `host.static_membership` (`true`/`false`) |
//! | `KWASM_ADMIN_LISTEN` | `host.admin_listen` |
//! | `KWASM_ADMIN_TOKEN` | `host.admin_token` |
//! | `KWASM_CACHE_DIR` | `host.cache_dir` |
//! | `KWASM_WORKERS` | `host.workers` |
//! | `KWASM_SHUTDOWN_GRACE_MS` | `host.shutdown_grace_ms` |
//! | `KWASM_MAX_PLUGIN_MEMORY_BYTES` | `host.max_plugin_memory_bytes` |
//! | `KWASM_BROKERS` | `kafka.brokers` |
//! | `KWASM_GROUP_PROTOCOL` | `kafka.group_protocol` (`classic`/`consumer`) |
//! | `KWASM_KAFKA_PROPERTY_<NAME>` | `kafka.properties."<name>"` |
//! | `KWASM_KAFKA_CONSUMER_PROPERTY_<NAME>` | `kafka.consumer_properties."<name>"` |
//! | `KWASM_KAFKA_PRODUCER_PROPERTY_<NAME>` | `kafka.producer_properties."<name>"` |
//! | `KWASM_REGISTRY_PROPERTY_<NAME>` | `registry.properties."<name>"` |
//!
//! `<NAME>` maps to a librdkafka property as Confluent's images map
//! `KAFKA_*`: lower-cased, `_` → `.`, `__` → `_`, `___` → `-`
//! (`KWASM_KAFKA_PROPERTY_SASL_PASSWORD` is `sasl.password`). Each property
//! is checked by librdkafka's own parser here, so an unknown name or a bad
//! value fails at startup naming the variable (never echoing the value: it
//! may be a password).
//!
//! Other `KWASM_*` variables (`KWASM_LOG`, `KWASM_CONFIG`, the test suite's
//! own) are not the config's and are left alone.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use super::{Config, ConfigError, GroupProtocol, TokenOrigin};

/// One scalar override: the variable and the field it sets.
const SCALARS: [(&str, &str); 10] = [
    ("KWASM_HOST_ID", "host.id"),
    ("KWASM_STATIC_MEMBERSHIP", "host.static_membership"),
    ("KWASM_ADMIN_LISTEN", "host.admin_listen"),
    ("KWASM_ADMIN_TOKEN", "host.admin_token"),
    ("KWASM_CACHE_DIR", "host.cache_dir"),
    ("KWASM_WORKERS", "host.workers"),
    ("KWASM_SHUTDOWN_GRACE_MS", "host.shutdown_grace_ms"),
    (
        "KWASM_MAX_PLUGIN_MEMORY_BYTES",
        "host.max_plugin_memory_bytes",
    ),
    ("KWASM_BROKERS", "kafka.brokers"),
    ("KWASM_GROUP_PROTOCOL", "kafka.group_protocol"),
];

/// Prefixes of librdkafka property overrides and the table they fill.
/// Longer prefixes first: `KWASM_KAFKA_CONSUMER_PROPERTY_` must not be read
/// as `KWASM_KAFKA_PROPERTY_`... (it is not, but order keeps that obvious).
const PROPERTY_PREFIXES: [(&str, &str); 4] = [
    (
        "KWASM_KAFKA_CONSUMER_PROPERTY_",
        "kafka.consumer_properties",
    ),
    (
        "KWASM_KAFKA_PRODUCER_PROPERTY_",
        "kafka.producer_properties",
    ),
    ("KWASM_KAFKA_PROPERTY_", "kafka.properties"),
    ("KWASM_REGISTRY_PROPERTY_", "registry.properties"),
];

/// The librdkafka property a `<NAME>` suffix stands for: lower-cased, runs
/// of one, two or three underscores are `.`, `_` and `-`. `None` for an
/// empty name, a longer run, or a character librdkafka names never hold.
pub fn property_name(suffix: &str) -> Option<String> {
    let mut out = String::with_capacity(suffix.len());
    let mut chars = suffix.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '_' {
            let mut run = 1;
            while chars.peek() == Some(&'_') {
                chars.next();
                run += 1;
            }
            out.push(match run {
                1 => '.',
                2 => '_',
                3 => '-',
                _ => return None,
            });
        } else if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else {
            return None;
        }
    }
    let bad_edge = |c: Option<char>| c.is_none_or(|c| c == '.');
    if bad_edge(out.chars().next()) || bad_edge(out.chars().last()) {
        return None;
    }
    Some(out)
}

/// Checks one property with librdkafka's parser (`rd_kafka_conf_set`), so
/// what passes here is what the clients accept. The message never contains
/// `value`.
fn check_property(name: &str, value: &str) -> Result<(), String> {
    let mut c = rdkafka::ClientConfig::new();
    c.set(name, value);
    match c.create_native_config() {
        Ok(_) => Ok(()),
        Err(rdkafka::error::KafkaError::ClientConfig(_, desc, _, _)) => {
            let desc = if value.is_empty() {
                desc
            } else {
                desc.replace(value, "<value>")
            };
            Err(desc)
        }
        Err(e) => Err(e.to_string()),
    }
}

fn env_error(variable: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Env {
        variable: variable.to_owned(),
        message: message.into(),
    }
}

fn parse_number<T: std::str::FromStr>(variable: &str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| env_error(variable, "must be a whole number"))
}

impl Config {
    /// Applies the process environment's overrides (see the module docs).
    /// Run [`Config::validate`] afterwards: overridden values are checked
    /// like file values, and errors then name the variable.
    pub fn with_env(self) -> Result<Config, ConfigError> {
        self.with_env_from(std::env::vars_os())
    }

    /// [`Config::with_env`] with the variables given (tests pass their own
    /// instead of changing the process's environment).
    pub fn with_env_from(
        mut self,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Config, ConfigError> {
        // Sorted, so that of two bad variables the same one is reported
        // every time.
        let vars: BTreeMap<OsString, OsString> = vars.into_iter().collect();
        for (name, value) in &vars {
            let Some(name) = name.to_str().filter(|n| n.starts_with("KWASM_")) else {
                continue;
            };
            let scalar = SCALARS.iter().find(|(v, _)| *v == name);
            let property = PROPERTY_PREFIXES
                .iter()
                .find(|(prefix, _)| name.starts_with(prefix));
            if scalar.is_none() && property.is_none() {
                continue;
            }
            let Some(value) = value.to_str() else {
                return Err(env_error(name, "is not valid UTF-8"));
            };
            if let Some((variable, field)) = scalar {
                self.apply_scalar(variable, value)?;
                self.host
                    .overridden_by_env
                    .insert((*field).to_owned(), (*variable).to_owned());
            } else if let Some((prefix, table)) = property {
                let suffix = &name[prefix.len()..];
                let key = property_name(suffix).ok_or_else(|| {
                    env_error(
                        name,
                        format!(
                            "`{suffix}` is not a property name: use letters and digits, `_` for `.`, \
                             `__` for `_`, `___` for `-` (KWASM_KAFKA_PROPERTY_SASL_PASSWORD is \
                             sasl.password)"
                        ),
                    )
                })?;
                check_property(&key, value).map_err(|why| {
                    env_error(name, format!("librdkafka property `{key}`: {why}"))
                })?;
                let properties = match *table {
                    "kafka.consumer_properties" => &mut self.kafka.consumer_properties,
                    "kafka.producer_properties" => &mut self.kafka.producer_properties,
                    "kafka.properties" => &mut self.kafka.properties,
                    _ => &mut self.registry.properties,
                };
                properties.insert(key.clone(), value.to_owned());
                self.host
                    .overridden_by_env
                    .insert(format!("{table}.\"{key}\""), name.to_owned());
            }
        }
        Ok(self)
    }

    fn apply_scalar(&mut self, variable: &str, value: &str) -> Result<(), ConfigError> {
        let host = &mut self.host;
        match variable {
            "KWASM_HOST_ID" => host.id = value.to_owned(),
            "KWASM_STATIC_MEMBERSHIP" => {
                host.static_membership = match value.trim() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(env_error(variable, "must be `true` or `false`")),
                }
            }
            "KWASM_ADMIN_LISTEN" => host.admin_listen = value.to_owned(),
            // Set even when empty, so that the admin check refuses it by
            // name rather than the host starting open.
            "KWASM_ADMIN_TOKEN" => {
                host.admin_token = Some(value.to_owned());
                host.admin_token_origin = TokenOrigin::Environment;
            }
            "KWASM_CACHE_DIR" => {
                if value.trim().is_empty() {
                    return Err(env_error(variable, "is empty; give a directory"));
                }
                host.cache_dir = PathBuf::from(value);
            }
            "KWASM_WORKERS" => host.workers = parse_number(variable, value)?,
            "KWASM_SHUTDOWN_GRACE_MS" => host.shutdown_grace_ms = parse_number(variable, value)?,
            "KWASM_MAX_PLUGIN_MEMORY_BYTES" => {
                host.max_plugin_memory_bytes = Some(parse_number(variable, value)?)
            }
            "KWASM_BROKERS" => self.kafka.brokers = value.to_owned(),
            "KWASM_GROUP_PROTOCOL" => {
                self.kafka.group_protocol = match value.trim() {
                    "classic" => GroupProtocol::Classic,
                    "consumer" => GroupProtocol::Consumer,
                    _ => return Err(env_error(variable, "must be `classic` or `consumer`")),
                }
            }
            _ => unreachable!("every entry of SCALARS is matched above"),
        }
        Ok(())
    }

    /// Names the environment variable in an error about a field it set.
    pub(super) fn name_env_origin(&self, error: ConfigError) -> ConfigError {
        match error {
            ConfigError::Invalid { field, message } => {
                match self.host.overridden_by_env.get(&field) {
                    Some(variable) => ConfigError::Env {
                        variable: variable.clone(),
                        message: format!("(sets `{field}`) {message}"),
                    },
                    None => ConfigError::Invalid { field, message },
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [host]
        id = "from-file"
        [kafka]
        brokers = "file:9092"
        [kafka.properties]
        "client.rack" = "file-rack"
    "#;

    fn file() -> Config {
        toml::from_str(FILE).expect("valid toml")
    }

    fn with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let config = file().with_env_from(
            vars.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn property_names_map_like_confluents_images() {
        for (suffix, name) in [
            ("SASL_PASSWORD", "sasl.password"),
            ("SECURITY_PROTOCOL", "security.protocol"),
            ("SSL_CA_LOCATION", "ssl.ca.location"),
            ("A__B", "a_b"),
            ("A___B", "a-b"),
            ("linger_ms", "linger.ms"),
        ] {
            assert_eq!(property_name(suffix).as_deref(), Some(name), "{suffix}");
        }
        for bad in ["", "_A", "A_", "A____B", "A.B", "A-B", "A B"] {
            assert_eq!(property_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn environment_wins_over_the_file_which_wins_over_defaults() {
        let c = with(&[
            ("KWASM_HOST_ID", "kwasm-1"),
            ("KWASM_BROKERS", "env:9092"),
            ("KWASM_STATIC_MEMBERSHIP", "true"),
            ("KWASM_KAFKA_PROPERTY_CLIENT_RACK", "env-rack"),
            ("KWASM_KAFKA_PROPERTY_SASL_PASSWORD", "s3cret"),
            ("KWASM_KAFKA_CONSUMER_PROPERTY_SESSION_TIMEOUT_MS", "30000"),
            ("KWASM_KAFKA_PRODUCER_PROPERTY_LINGER_MS", "7"),
            ("KWASM_REGISTRY_PROPERTY_SASL_USERNAME", "kwasm-registry"),
            ("KWASM_SHUTDOWN_GRACE_MS", "20000"),
            ("KWASM_ADMIN_TOKEN", "t0ken"),
            // Not the config's: ignored, whatever the value.
            ("KWASM_LOG", "debug"),
            ("KWASM_TEST_BROKERS", ""),
            ("PATH", "/bin"),
        ])
        .expect("valid");
        assert_eq!(c.host.id, "kwasm-1");
        assert!(c.host.static_membership);
        assert_eq!(c.kafka.brokers, "env:9092");
        assert_eq!(c.kafka.properties["client.rack"], "env-rack");
        assert_eq!(c.kafka.properties["sasl.password"], "s3cret");
        assert_eq!(c.kafka.consumer_properties["session.timeout.ms"], "30000");
        assert_eq!(c.kafka.producer_properties["linger.ms"], "7");
        assert_eq!(c.registry.properties["sasl.username"], "kwasm-registry");
        assert_eq!(c.host.shutdown_grace_ms, 20_000);
        assert_eq!(c.host.admin_token.as_deref(), Some("t0ken"));
        assert_eq!(c.host.admin_token_origin, TokenOrigin::Environment);
        // Untouched: the file's values, then the defaults.
        let c = with(&[]).expect("valid");
        assert_eq!(c.host.id, "from-file");
        assert_eq!(c.kafka.properties["client.rack"], "file-rack");
        assert!(!c.host.static_membership);
        assert_eq!(c.host.shutdown_grace_ms, 10_000);
    }

    #[test]
    fn a_file_without_brokers_takes_them_from_the_environment() {
        let config: Config = toml::from_str("[host]\nid = \"a\"").expect("toml");
        let err = config.clone().validate().expect_err("no brokers");
        assert!(err.to_string().contains("KWASM_BROKERS"), "{err}");
        let config = config
            .with_env_from([("KWASM_BROKERS".into(), "b:9092".into())])
            .expect("env");
        config.validate().expect("valid");
        assert_eq!(config.kafka.brokers, "b:9092");
    }

    #[test]
    fn a_bad_value_fails_naming_the_variable() {
        for (var, value, expect) in [
            ("KWASM_STATIC_MEMBERSHIP", "yes", "`true` or `false`"),
            ("KWASM_WORKERS", "many", "whole number"),
            ("KWASM_WORKERS", "0", "at least 1"),
            (
                "KWASM_GROUP_PROTOCOL",
                "cooperative",
                "`classic` or `consumer`",
            ),
            ("KWASM_HOST_ID", "", "host.id"),
            ("KWASM_HOST_ID", "two words", "host.id"),
            ("KWASM_BROKERS", " ", "at least one broker"),
            ("KWASM_ADMIN_LISTEN", "everywhere", "127.0.0.1:8080"),
            ("KWASM_MAX_PLUGIN_MEMORY_BYTES", "12", "at least 1048576"),
            ("KWASM_KAFKA_PROPERTY_NO_SUCH_THING", "1", "no.such.thing"),
            ("KWASM_KAFKA_PROPERTY_", "1", "not a property name"),
            (
                "KWASM_KAFKA_PROPERTY_SESSION_TIMEOUT_MS",
                "soon",
                "session.timeout.ms",
            ),
            (
                "KWASM_KAFKA_CONSUMER_PROPERTY_GROUP_PROTOCOL",
                "consumer",
                "kafka.group_protocol",
            ),
        ] {
            let err = with(&[(var, value)]).expect_err(var).to_string();
            assert!(
                err.starts_with(&format!("invalid environment variable `{var}`"))
                    && err.contains(expect),
                "{var}={value}: {err}"
            );
        }
    }

    #[test]
    fn a_property_error_never_shows_the_value() {
        let err = with(&[("KWASM_KAFKA_PROPERTY_SECURITY_PROTOCOL", "hunter2-secret")])
            .expect_err("bad protocol")
            .to_string();
        assert!(
            err.contains("security.protocol") && err.contains("<value>"),
            "{err}"
        );
        assert!(!err.contains("hunter2-secret"), "{err}");
    }

    #[test]
    fn a_value_that_is_not_utf8_is_named() {
        use std::os::unix::ffi::OsStringExt;
        let err = file()
            .with_env_from([(
                OsString::from("KWASM_HOST_ID"),
                OsString::from_vec(vec![0xff, 0xfe]),
            )])
            .expect_err("not utf-8")
            .to_string();
        assert!(
            err.contains("`KWASM_HOST_ID`") && err.contains("UTF-8"),
            "{err}"
        );
    }
}
