//! Topic names, and which topics a pipeline may write: the trust boundary
//! between the data plane and the control plane.
//!
//! Everything a plugin returns comes from input topics that anyone with
//! produce rights writes, so a plugin's output records are untrusted. The
//! control plane (the registry's topics, which steer every host, and
//! Kafka's internal `__` topics) must never be writable from the data
//! plane, and a pipeline writes only the topics it declares. One
//! [`OutputPolicy`] decides both, and the same function serves every
//! entry point: pipeline validation (config file, admin API, registry
//! replay) and the partition worker, per output record.

use std::collections::HashSet;

use crate::config::{PipelineSpec, RegistryConfig};
use crate::kafka::regex::KafkaRegex;

/// Kafka's longest topic name.
pub const MAX_TOPIC_NAME_BYTES: usize = 249;

/// Kafka's topic-name rule: 1 to 249 characters of `[a-zA-Z0-9._-]`, and
/// not `.` or `..`.
pub fn is_topic_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TOPIC_NAME_BYTES
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The control plane's topics: the registry's (as configured), anything
/// under kwasm's reserved `_kwasm` prefix (another registry's defaults on
/// a shared cluster), and Kafka's internal `__` topics
/// (`__consumer_offsets`, `__transaction_state`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    registry_topics: Vec<String>,
}

/// Prefix of Kafka's internal topics.
const KAFKA_INTERNAL_PREFIX: &str = "__";
/// Prefix kwasm reserves for its own topics.
const KWASM_PREFIX: &str = "_kwasm";

impl ControlPlane {
    /// The control plane of a host with this registry.
    pub fn new(registry: &RegistryConfig) -> ControlPlane {
        ControlPlane {
            registry_topics: vec![
                registry.plugins_topic.clone(),
                registry.pipelines_topic.clone(),
                registry.members_topic.clone(),
                registry.logs_topic.clone(),
            ],
        }
    }

    /// Why `topic` belongs to the control plane, or `None` if it does not.
    pub fn reason(&self, topic: &str) -> Option<&'static str> {
        if self.registry_topics.iter().any(|t| t == topic) {
            Some("is one of the registry's topics")
        } else if topic.starts_with(KAFKA_INTERNAL_PREFIX) {
            Some("is a Kafka internal topic (`__` prefix)")
        } else if topic.starts_with(KWASM_PREFIX) {
            Some("is reserved for kwasm (`_kwasm` prefix)")
        } else {
            None
        }
    }

    /// librdkafka's `topic.blacklist` for the pipelines' consumers: a regex
    /// subscription never sees these topics, as if they did not exist.
    pub fn consumer_blacklist(&self) -> String {
        let mut patterns: Vec<String> = self
            .registry_topics
            .iter()
            .map(|t| format!("^{}$", t.replace('.', "\\.")))
            .collect();
        patterns.push(format!("^{KAFKA_INTERNAL_PREFIX}"));
        patterns.push(format!("^{KWASM_PREFIX}"));
        patterns.join(",")
    }
}

impl Default for ControlPlane {
    fn default() -> Self {
        ControlPlane::new(&RegistryConfig::default())
    }
}

/// Why a record may not go to a topic. The worker dead-letters the message
/// as `output-not-allowed` with this text; validation reports it against
/// the field that named the topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputDenied {
    /// Not a topic name Kafka accepts.
    #[error("`{topic}` is not a valid Kafka topic name")]
    InvalidName {
        /// The topic.
        topic: String,
    },
    /// A control-plane topic.
    #[error("topic `{topic}` {reason}: the data plane never writes the control plane")]
    ControlPlane {
        /// The topic.
        topic: String,
        /// Which part of the control plane.
        reason: &'static str,
    },
    /// One of the pipeline's own inputs.
    #[error(
        "topic `{topic}` is an input of this pipeline (a feedback loop); set `allow_loop = true` to allow it"
    )]
    Loop {
        /// The topic.
        topic: String,
    },
    /// Not among the pipeline's declared outputs.
    #[error(
        "topic `{topic}` is not declared by the pipeline (declare it in `extra_outputs` or match it with `outputs_regex`)"
    )]
    Undeclared {
        /// The topic.
        topic: String,
    },
}

/// Most `extra_outputs` a pipeline may declare.
pub const MAX_EXTRA_OUTPUTS: usize = 64;

/// Which topics one pipeline may write: its `output`, `dead_letter_topic`,
/// `extra_outputs` and any topic matching `outputs_regex`, never the
/// control plane, and not its own inputs unless `allow_loop`.
#[derive(Debug)]
pub struct OutputPolicy {
    control: ControlPlane,
    declared: HashSet<String>,
    declared_regex: Option<KafkaRegex>,
    inputs: Inputs,
    allow_loop: bool,
}

#[derive(Debug)]
enum Inputs {
    Topics(HashSet<String>),
    Regex(KafkaRegex),
}

/// A regex field that librdkafka would not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct RegexError {
    /// `input_regex` or `outputs_regex`.
    pub field: &'static str,
    /// librdkafka's reason.
    pub message: String,
}

impl OutputPolicy {
    /// The policy of `spec` on a host whose control plane is `control`.
    pub fn new(spec: &PipelineSpec, control: &ControlPlane) -> Result<OutputPolicy, RegexError> {
        let inputs = match &spec.input_regex {
            Some(_) => Inputs::Regex(compile("input_regex", &spec.subscription_regex())?),
            None => Inputs::Topics(spec.inputs.iter().cloned().collect()),
        };
        let declared_regex = spec
            .outputs_regex
            .as_deref()
            // A declaration is a whole name, not a search: `orders-.*` must
            // not also allow `x-orders-y`.
            .map(|re| compile("outputs_regex", &format!("^({re})$")))
            .transpose()?;
        let mut declared: HashSet<String> = spec.extra_outputs.iter().cloned().collect();
        declared.insert(spec.output.clone());
        declared.insert(spec.dead_letter_topic());
        Ok(OutputPolicy {
            control: control.clone(),
            declared,
            declared_regex,
            inputs,
            allow_loop: spec.allow_loop,
        })
    }

    /// Whether a record may go to `topic`.
    pub fn check(&self, topic: &str) -> Result<(), OutputDenied> {
        self.check_reachable(topic)?;
        let declared = self.declared.contains(topic)
            || self
                .declared_regex
                .as_ref()
                .is_some_and(|re| re.is_match(topic));
        if !declared {
            return Err(OutputDenied::Undeclared {
                topic: topic.to_owned(),
            });
        }
        Ok(())
    }

    /// The rules that hold whatever is declared: a valid name, not the
    /// control plane, not an input (unless the pipeline opts into a loop).
    fn check_reachable(&self, topic: &str) -> Result<(), OutputDenied> {
        if !is_topic_name(topic) {
            return Err(OutputDenied::InvalidName {
                topic: topic.to_owned(),
            });
        }
        if let Some(reason) = self.control.reason(topic) {
            return Err(OutputDenied::ControlPlane {
                topic: topic.to_owned(),
                reason,
            });
        }
        let is_input = match &self.inputs {
            Inputs::Topics(topics) => topics.contains(topic),
            Inputs::Regex(re) => re.is_match(topic),
        };
        if is_input && !self.allow_loop {
            return Err(OutputDenied::Loop {
                topic: topic.to_owned(),
            });
        }
        Ok(())
    }

    /// Checks the topics the pipeline itself names, for validation:
    /// `(field, denial)` of the first that breaks a rule.
    pub fn check_declarations(&self, spec: &PipelineSpec) -> Result<(), (String, OutputDenied)> {
        let named = [
            ("output".to_owned(), spec.output.clone()),
            ("dead_letter_topic".to_owned(), spec.dead_letter_topic()),
        ];
        let extra = spec
            .extra_outputs
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("extra_outputs[{i}]"), t.clone()));
        for (field, topic) in named.into_iter().chain(extra) {
            self.check_reachable(&topic).map_err(|e| (field, e))?;
        }
        Ok(())
    }
}

fn compile(field: &'static str, pattern: &str) -> Result<KafkaRegex, RegexError> {
    KafkaRegex::new(pattern).map_err(|message| RegexError { field, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PipelineSpec {
        PipelineSpec {
            name: "p".into(),
            plugin: "x.wasm".into(),
            inputs: vec!["orders".into()],
            output: "orders-clean".into(),
            ..PipelineSpec::default()
        }
    }

    fn policy(spec: &PipelineSpec) -> OutputPolicy {
        OutputPolicy::new(spec, &ControlPlane::default()).expect("valid")
    }

    #[test]
    fn topic_names_follow_kafkas_rule() {
        for ok in ["a", "orders.eu-1_x", "_private", &"x".repeat(249)] {
            assert!(is_topic_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "ü", &"x".repeat(250)] {
            assert!(!is_topic_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_control_plane_is_never_writable_whatever_is_declared() {
        let mut s = spec();
        s.outputs_regex = Some(".*".into());
        let p = policy(&s);
        for topic in [
            "_kwasm_pipelines",
            "_kwasm_plugins",
            "_kwasm_members",
            "_kwasm_other",
            "__consumer_offsets",
            "__transaction_state",
            "__anything",
        ] {
            assert!(
                matches!(p.check(topic), Err(OutputDenied::ControlPlane { .. })),
                "{topic}: {:?}",
                p.check(topic)
            );
        }
        assert_eq!(p.check("anything-else"), Ok(()));
    }

    #[test]
    fn configured_registry_topics_are_control_plane_too() {
        let registry = RegistryConfig {
            pipelines_topic: "ops.pipelines".into(),
            ..RegistryConfig::default()
        };
        let control = ControlPlane::new(&registry);
        assert!(control.reason("ops.pipelines").is_some());
        // The plugin logs topic, under any name, is control plane too.
        let logs = ControlPlane::new(&RegistryConfig {
            logs_topic: "ops.plugin-logs".into(),
            ..RegistryConfig::default()
        });
        assert_eq!(
            logs.reason("ops.plugin-logs"),
            Some("is one of the registry's topics")
        );
        assert!(control.reason("opsXpipelines").is_none());
        assert_eq!(
            control.consumer_blacklist(),
            "^_kwasm_plugins$,^ops\\.pipelines$,^_kwasm_members$,^_kwasm_logs$,^__,^_kwasm"
        );
    }

    #[test]
    fn only_declared_topics_are_writable() {
        let mut s = spec();
        s.extra_outputs = vec!["audit".into()];
        s.outputs_regex = Some("orders-(eu|us)".into());
        let p = policy(&s);
        for ok in ["orders-clean", "p.dlq", "audit", "orders-eu", "orders-us"] {
            assert_eq!(p.check(ok), Ok(()), "{ok}");
        }
        for undeclared in ["orders-asia", "orders-eu2", "x-orders-eu", "other"] {
            assert!(
                matches!(p.check(undeclared), Err(OutputDenied::Undeclared { .. })),
                "{undeclared}"
            );
        }
        assert!(matches!(
            p.check("bad topic"),
            Err(OutputDenied::InvalidName { .. })
        ));
    }

    #[test]
    fn inputs_are_refused_unless_the_pipeline_opts_into_a_loop() {
        let mut s = spec();
        s.extra_outputs = vec!["orders".into()];
        assert!(matches!(
            policy(&s).check("orders"),
            Err(OutputDenied::Loop { .. })
        ));
        s.allow_loop = true;
        assert_eq!(policy(&s).check("orders"), Ok(()));
    }

    #[test]
    fn an_input_regex_counts_as_inputs_as_librdkafka_matches_it() {
        let mut s = spec();
        s.inputs = vec![];
        // librdkafka adds only `^`: `orders` subscribes `orders-clean` too.
        s.input_regex = Some("orders".into());
        let p = policy(&s);
        assert!(matches!(
            p.check("orders-clean"),
            Err(OutputDenied::Loop { .. })
        ));
        assert_eq!(
            p.check_declarations(&s).map_err(|(f, _)| f),
            Err("output".to_owned())
        );
    }

    #[test]
    fn declarations_are_checked_by_field() {
        let mut s = spec();
        s.dead_letter_topic = Some("_kwasm_pipelines".into());
        assert_eq!(
            policy(&s).check_declarations(&s).map_err(|(f, _)| f),
            Err("dead_letter_topic".to_owned())
        );
        let mut s = spec();
        s.extra_outputs = vec!["fine".into(), "__consumer_offsets".into()];
        assert_eq!(
            policy(&s).check_declarations(&s).map_err(|(f, _)| f),
            Err("extra_outputs[1]".to_owned())
        );
    }

    #[test]
    fn regexes_librdkafka_refuses_are_refused_by_field() {
        let mut s = spec();
        s.outputs_regex = Some("((".into());
        let err = OutputPolicy::new(&s, &ControlPlane::default()).expect_err("bad");
        assert_eq!(err.field, "outputs_regex");
        let mut s = spec();
        s.inputs = vec![];
        s.input_regex = Some("((".into());
        let err = OutputPolicy::new(&s, &ControlPlane::default()).expect_err("bad");
        assert_eq!(err.field, "input_regex");
    }
}
