//! The `[dead_letter]` section (`dead_letter`): parsed here, validated into
//! `dead_letter::Settings`.

use serde::Deserialize;

use super::ConfigError;
use crate::dead_letter::{Format, Policy, Reason, Settings};

/// What may be lost, and how dead letters are published. Off by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLetterConfig {
    pub enabled: bool,
    /// Reason names (`Reason::label`): the losses that get a dead letter.
    pub reasons: Vec<String>,
    /// With `delivery_limit` among `reasons`: the most times a QoS 1/2 message is sent to a
    /// session without an acknowledgement.
    pub delivery_limit: u16,
    /// Dead letters per second, sustained; 0 = no limit.
    pub max_rate: u32,
    /// Payload bytes carried in a dead letter; a larger payload is left out and flagged.
    pub max_payload: usize,
    /// "raw" or "json".
    pub format: String,
}

impl Default for DeadLetterConfig {
    /// As `config/tern.toml` says (a file without the section gets these).
    fn default() -> Self {
        DeadLetterConfig {
            enabled: false,
            reasons: ["queue_full", "expired", "rejected", "too_large"].map(String::from).to_vec(),
            delivery_limit: 5,
            max_rate: 100,
            max_payload: 65_536,
            format: "raw".into(),
        }
    }
}

impl DeadLetterConfig {
    /// Checks every key, enabled or not (a typo should not wait for the day it is turned on).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.parse().map(|_| ())
    }

    /// The settings to run with; `None` when disabled. Call after `validate`.
    pub fn settings(&self) -> Option<Settings> {
        self.parse().ok().flatten()
    }

    fn parse(&self) -> Result<Option<Settings>, ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
        let reasons = self
            .reasons
            .iter()
            .map(|name| {
                Reason::from_label(name).ok_or_else(|| {
                    let known: Vec<_> = Reason::ALL.iter().map(|r| r.label()).collect();
                    invalid(
                        "dead_letter.reasons",
                        format!("unknown reason {name:?}, expected one of {known:?}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if reasons.contains(&Reason::DeliveryLimit) && self.delivery_limit == 0 {
            return Err(invalid(
                "dead_letter.delivery_limit",
                "must be between 1 and 65535 when reasons include \"delivery_limit\"".into(),
            ));
        }
        let format = match self.format.as_str() {
            "raw" => Format::Raw,
            "json" => Format::Json,
            other => {
                return Err(invalid("dead_letter.format", format!("{other:?}: must be \"raw\" or \"json\"")))
            }
        };
        if self.enabled && reasons.is_empty() {
            return Err(invalid("dead_letter.reasons", "must name at least one reason when enabled".into()));
        }
        Ok(self.enabled.then(|| Settings {
            policy: Policy::new(&reasons, self.delivery_limit),
            max_rate: self.max_rate,
            max_payload: self.max_payload,
            format,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::dead_letter::{Format, Reason};

    #[test]
    fn off_by_default_with_the_documented_reasons() {
        let config = Config::from_toml("").unwrap();
        assert!(config.dead_letter.settings().is_none());
        let on = Config::from_toml("[dead_letter]\nenabled = true").unwrap().dead_letter.settings().unwrap();
        for reason in [Reason::QueueFull, Reason::Expired, Reason::Rejected, Reason::TooLarge] {
            assert!(on.policy.wants(reason), "{reason:?}");
        }
        assert!(!on.policy.wants(Reason::DeliveryLimit) && !on.policy.wants(Reason::SessionExpired));
        assert_eq!(on.policy.delivery_limit(), None, "opt-in");
        assert_eq!((on.max_rate, on.max_payload, on.format), (100, 65_536, Format::Raw));
    }

    #[test]
    fn opt_in_reasons_and_the_delivery_limit() {
        let toml = "[dead_letter]\nenabled = true\nreasons = [\"delivery_limit\", \"session_expired\"]\n\
                    delivery_limit = 3\nformat = \"json\"";
        let on = Config::from_toml(toml).unwrap().dead_letter.settings().unwrap();
        assert_eq!(on.policy.delivery_limit(), Some(3));
        assert!(on.policy.wants(Reason::SessionExpired) && !on.policy.wants(Reason::QueueFull));
        assert_eq!(on.format, Format::Json);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (toml, key) in [
            ("reasons = [\"lost\"]", "dead_letter.reasons"),
            ("enabled = true\nreasons = []", "dead_letter.reasons"),
            ("reasons = [\"delivery_limit\"]\ndelivery_limit = 0", "dead_letter.delivery_limit"),
            ("format = \"xml\"", "dead_letter.format"),
            ("max_rate = -1", "max_rate"),
            ("max_rat = 1", "max_rat"),
        ] {
            let err = Config::from_toml(&format!("[dead_letter]\n{toml}")).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }
}
