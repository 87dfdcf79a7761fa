//! Topic names and topic filters: validation and the matching rules of MQTT section 4.7.

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters are at least one character long [MQTT-4.7.3-1].
    #[error("empty topic [MQTT-4.7.3-1]")]
    Empty,
    /// U+0000 is not allowed in a topic [MQTT-4.7.3-2].
    #[error("topic contains U+0000 [MQTT-4.7.3-2]")]
    NullCharacter,
    /// Wildcards are not allowed in a topic name [MQTT-3.3.2-2].
    #[error("wildcard in a topic name [MQTT-3.3.2-2]")]
    WildcardInName,
    /// `#` must be the last character and occupy a whole level [MQTT-4.7.1-2].
    #[error("'#' not alone in the last level [MQTT-4.7.1-2]")]
    MisplacedMultiLevelWildcard,
    /// `+` must occupy a whole level [MQTT-4.7.1-3].
    #[error("'+' not alone in its level [MQTT-4.7.1-3]")]
    MisplacedSingleLevelWildcard,
    /// `$share/` must be followed by a share name without wildcards and a filter [MQTT-4.8.2-2].
    #[error("invalid shared subscription [MQTT-4.8.2-2]")]
    InvalidShareName,
    /// Longer than `limits.max_topic_length`.
    #[error("topic longer than limits.max_topic_length ({0} bytes)")]
    TooLong(usize),
    /// More levels than `limits.max_topic_levels`.
    #[error("topic deeper than limits.max_topic_levels ({0} levels)")]
    TooDeep(usize),
}

/// Checks a topic name or filter against the configured size limits.
pub fn check_limits(topic: &str, max_length: usize, max_levels: usize) -> Result<(), TopicError> {
    if topic.len() > max_length {
        return Err(TopicError::TooLong(max_length));
    }
    if topic.split('/').nth(max_levels).is_some() {
        return Err(TopicError::TooDeep(max_levels));
    }
    Ok(())
}

/// Checks a topic name as found in PUBLISH or a will.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    for byte in topic.bytes() {
        match byte {
            0 => return Err(TopicError::NullCharacter),
            b'+' | b'#' => return Err(TopicError::WildcardInName),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a topic filter as found in SUBSCRIBE or UNSUBSCRIBE.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return Err(TopicError::MisplacedMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

/// The root level of the `$SYS` tree (`sys.rs`).
pub const SYS_ROOT: &str = "$SYS";
/// The root level of dead letters (`dead_letter`).
pub const DLQ_ROOT: &str = "$DLQ";

/// True for topics under a root only the broker publishes to (`$SYS`, `$DLQ`): clients'
/// PUBLISH and wills there are refused, so what readers find there is the broker's; and a
/// message there is never dead-lettered (no loops).
pub fn is_broker_topic(topic: &str) -> bool {
    [SYS_ROOT, DLQ_ROOT]
        .iter()
        .any(|root| topic.strip_prefix(root).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

/// True when `filter` matches `topic`. Both must already be valid. Filters that start with a
/// wildcard do not match topics beginning with `$` [MQTT-4.7.2-1].
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for filter_level in filter.split('/') {
        if filter_level == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(level) if filter_level == "+" || filter_level == level => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_and_dlq_topics_are_the_broker_s() {
        for topic in ["$SYS", "$SYS/x", "$DLQ", "$DLQ/expired/a/b"] {
            assert!(is_broker_topic(topic), "{topic}");
        }
        for topic in ["$SYSTEM/x", "a/$SYS/x", "$DLQX", "dlq/x", "$share/g/$DLQ/x"] {
            assert!(!is_broker_topic(topic), "{topic}");
        }
    }

    #[test]
    fn limits_bound_length_and_levels() {
        assert_eq!(check_limits("a/b/c", 5, 3), Ok(()));
        assert_eq!(check_limits("a/b/cd", 5, 3), Err(TopicError::TooLong(5)));
        assert_eq!(check_limits("a/b/c/d", 100, 3), Err(TopicError::TooDeep(3)));
        assert_eq!(check_limits("/", 100, 2), Ok(()), "two empty levels");
        assert_eq!(check_limits("//", 100, 2), Err(TopicError::TooDeep(2)));
    }

    #[test]
    fn topic_names_reject_wildcards_nul_and_empty() {
        assert_eq!(validate_topic_name("a/b"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name("a//b"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a+b"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn topic_filters_follow_wildcard_placement_rules() {
        for ok in ["#", "+", "a/#", "+/+", "a/+/b", "/+", "a//b", "+/#", "$SYS/#"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for (bad, err) in [
            ("", TopicError::Empty),
            ("a/#/b", TopicError::MisplacedMultiLevelWildcard),
            ("a#", TopicError::MisplacedMultiLevelWildcard),
            ("a/b#", TopicError::MisplacedMultiLevelWildcard),
            ("a+", TopicError::MisplacedSingleLevelWildcard),
            ("a/+b/c", TopicError::MisplacedSingleLevelWildcard),
            ("a/\0", TopicError::NullCharacter),
        ] {
            assert_eq!(validate_topic_filter(bad), Err(err), "{bad:?}");
        }
    }

    #[test]
    fn matching_follows_section_4_7() {
        // [MQTT-4.7.1-2]: "sport/#" also matches the parent level "sport".
        assert!(filter_matches("sport/#", "sport"));
        assert!(filter_matches("sport/#", "sport/tennis/player1"));
        assert!(filter_matches("sport/+", "sport/"));
        assert!(!filter_matches("sport/+", "sport"));
        assert!(filter_matches("+/+", "/finance"));
        assert!(filter_matches("/+", "/finance"));
        assert!(!filter_matches("+", "/finance"));
        assert!(filter_matches("#", "a/b/c"));
        assert!(filter_matches("a/+/c", "a//c"));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(!filter_matches("a/b/c", "a/b"));
    }

    #[test]
    fn wildcards_at_the_first_level_do_not_match_dollar_topics() {
        // [MQTT-4.7.2-1]
        assert!(!filter_matches("#", "$SYS/uptime"));
        assert!(!filter_matches("+/uptime", "$SYS/uptime"));
        assert!(filter_matches("$SYS/#", "$SYS/uptime"));
        assert!(filter_matches("$SYS/+", "$SYS/uptime"));
    }
}
