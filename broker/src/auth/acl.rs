//! The Mosquitto-format ACL file (`acl_file` in mosquitto.conf(5)).
//!
//! ```text
//! # Anonymous clients (no username) only: rules before the first `user` line.
//! topic read $SYS/#
//!
//! user roger
//! topic foo/bar                      # access defaults to readwrite
//! topic deny foo/bar/secret          # deny wins over any grant
//!
//! # Patterns apply to every client, wherever they appear in the file.
//! pattern write sensor/%u/data
//! pattern readwrite devices/%c/#
//! ```
//!
//! Decision rule: an access is allowed when some applicable read/write/readwrite rule matches and no
//! applicable `deny` rule matches; with an ACL configured, everything not granted is denied. The rules
//! applicable to a client are its own section (the anonymous one when it has no username) plus every
//! `pattern` line.
//!
//! Where Tern deliberately differs from Mosquitto 2.0's `security_default.c`:
//! - Mosquitto stops at the first matching rule of the user section before looking at patterns, so a
//!   `pattern deny` cannot take back a user-section grant; here a deny anywhere wins, as the file
//!   format documentation ("deny ... access to a topic that would otherwise be granted") suggests.
//! - Mosquitto refuses every pattern for a client whose username or client id contains `+` or `#`.
//!   Here an identity that is empty or contains `+`, `#` or `/` (the `/` refusal is Mosquitto 1.x's and,
//!   in effect, 2.1's) makes each pattern that would substitute it fail closed: a grant does not match
//!   and a deny matches every topic, so such an identity can lose access but never gain it.
//! - `%u`/`%c` are substituted only when they are a whole topic level, as the documentation requires
//!   ("the substitution pattern must be the only text for that level of hierarchy"); other uses are a
//!   load error rather than Mosquitto 2.0's silent substring replacement.
//! - `topic read` (an access word and nothing else) is a missing topic, not a rule for a topic named
//!   `read`; likewise a rule filter with a misplaced wildcard is a load error, as in Mosquitto 2.0.

use std::collections::HashMap;
use std::path::Path;

/// What a client wants to do with a topic name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive a message published on the topic.
    Read,
    /// Publish to the topic.
    Write,
}

/// Why an ACL file could not be loaded. Every parse error names the file and the 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file could not be read (including when it is not UTF-8).
    #[error("{origin}: {source}")]
    Io { origin: String, source: std::io::Error },
    /// The first word of the line is not `topic`, `pattern` or `user`.
    #[error("{origin}:{line}: unknown directive \"{directive}\"")]
    UnknownDirective { origin: String, line: usize, directive: String },
    /// A `topic` or `pattern` line without a topic.
    #[error("{origin}:{line}: missing topic")]
    MissingTopic { origin: String, line: usize },
    /// The word before the topic is not `read`, `write`, `readwrite` or `deny`.
    #[error("{origin}:{line}: unknown access \"{access}\"")]
    UnknownAccess { origin: String, line: usize, access: String },
    /// A `user` line without a username.
    #[error("{origin}:{line}: missing username")]
    MissingUsername { origin: String, line: usize },
    /// The rule's topic is not a valid MQTT topic filter.
    #[error("{origin}:{line}: invalid topic filter \"{topic}\": {reason}")]
    InvalidTopic { origin: String, line: usize, topic: String, reason: &'static str },
}

/// A parsed ACL file, ready for the per-packet checks.
#[derive(Debug)]
pub struct Acl {
    /// Rules before the first `user` line: they apply to clients without a username only.
    anonymous: RuleSet,
    /// Rules after `user <name>`, keyed by that name (repeated sections are merged, as in Mosquitto).
    users: HashMap<String, RuleSet>,
    /// `pattern` rules: they apply to every client.
    patterns: RuleSet,
}

impl Acl {
    /// Reads and parses the ACL file at `path`; errors name the path as given.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Acl::parse(&text, &origin),
            Err(source) => Err(AclError::Io { origin, source }),
        }
    }

    /// Parses ACL file text; `origin` (usually the file path) prefixes error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Acl, AclError> {
        let mut acl =
            Acl { anonymous: RuleSet::default(), users: HashMap::new(), patterns: RuleSet::default() };
        let mut user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let at = LineRef { origin, line: index + 1 };
            match parse_line(raw, &at)? {
                Line::Blank => {}
                Line::User(name) => user = Some(name),
                Line::Topic(rule) => acl.section_mut(user.as_deref()).push(rule),
                Line::Pattern(rule) => acl.patterns.push(rule),
            }
        }
        Ok(acl)
    }

    /// May this client publish to (Write) / receive a message published on (Read) this topic NAME?
    ///
    /// Standard MQTT matching of each rule filter against the name: `+` matches one level, `#` the
    /// rest including the parent (`a/#` matches `a`) [MQTT-4.7.1-2], and a rule whose first level
    /// is not literal text does not match a name starting with `$` [MQTT-4.7.2-1]. A name that is
    /// empty or contains a wildcard is not a topic name [MQTT-4.7.3-1, MQTT-3.3.2-2] and is refused.
    pub fn allows_topic(&self, username: Option<&str>, client_id: &str, topic: &str, access: Access) -> bool {
        if !is_topic_name(topic) {
            return false;
        }
        let client = Client { username, client_id };
        self.decide(
            client,
            |filter| filter.matches_topic(topic, client),
            |permission| permission.grants(access),
        )
    }

    /// May this client SUBSCRIBE with this FILTER (which may contain wildcards)?
    ///
    /// This decides the SUBACK only; the broker still checks every delivered message with
    /// [`Acl::allows_topic`] and [`Access::Read`].
    ///
    /// The subscription is allowed when it is a subset of a single applicable `read`/`readwrite` rule
    /// and of no applicable `deny` rule, where "filter S is a subset of rule R" means every topic name
    /// S can match, R matches too. Level by level:
    /// - a rule `#` covers whatever remains of S, including nothing (`a/#` covers `a` and `a/#`);
    /// - a rule `+` covers any one level of S except `#` (`a/+` covers `a/b` and `a/+`, not `a/#`);
    /// - literal rule text (and a `%u`/`%c` after substitution) covers only the same literal text
    ///   (`a/b` does not cover `a/+`);
    /// - S and R must run out together, unless R's remainder is `#`;
    /// - a rule whose first level is not literal text does not cover a filter starting with `$`
    ///   [MQTT-4.7.2-1], so `#` does not cover `$SYS/#`.
    ///
    /// So a deny rule that only overlaps the subscription (`deny a/secret` against SUBSCRIBE `a/#`)
    /// does not refuse it: the SUBACK grants `a/#` and the per-message check withholds `a/secret`.
    /// A shared subscription `$share/<name>/<filter>` is checked as `<filter>` [MQTT-4.8.2]; an
    /// invalid filter or share name is refused.
    ///
    /// Source: Mosquitto 2.0's `acl_file` check (`mosquitto_acl_check_default` in
    /// src/security_default.c) returns success for `MOSQ_ACL_SUBSCRIBE` outright (marked "FIXME -
    /// implement ACL subscription strings") and relies on the per-message read check. The subset
    /// relation above is the one Mosquitto applies where it does check subscriptions against rule
    /// filters: the dynamic-security plugin's `sub_acl_check` (2.0) and libmosquitto's
    /// `mosquitto_sub_matches_acl` (2.1), whose rule decides allow or deny. Both agree on the
    /// examples above; where they differ (filters starting with `$`, and rule `+/#` against `#`,
    /// which only `sub_acl_check` accepts) this follows `mosquitto_sub_matches_acl`.
    pub fn allows_subscription(&self, username: Option<&str>, client_id: &str, filter: &str) -> bool {
        let Some(filter) = subscription_filter(filter) else {
            return false;
        };
        let client = Client { username, client_id };
        self.decide(
            client,
            |rule| rule.covers_filter(filter, client),
            |permission| permission.grants(Access::Read),
        )
    }

    /// The rule set that `topic` lines extend: the current user's, or the anonymous one.
    fn section_mut(&mut self, user: Option<&str>) -> &mut RuleSet {
        match user {
            None => &mut self.anonymous,
            Some(name) => self.users.entry(name.to_owned()).or_default(),
        }
    }

    /// Denies first, across all applicable sets, so that a deny anywhere beats a grant anywhere.
    fn decide(
        &self,
        client: Client<'_>,
        matches: impl Fn(&Filter) -> bool,
        wanted: impl Fn(Permission) -> bool,
    ) -> bool {
        let own = match client.username {
            None => Some(&self.anonymous),
            Some(name) => self.users.get(name),
        };
        let sets = || own.into_iter().chain(std::iter::once(&self.patterns));
        let denied = sets().any(|set| set.denies.iter().any(|filter| filter.deny_applies(client, &matches)));
        !denied
            && sets().any(|set| {
                set.grants
                    .iter()
                    .any(|rule| wanted(rule.permission) && rule.filter.grant_applies(client, &matches))
            })
    }
}

/// The identity a check is made for.
#[derive(Clone, Copy)]
struct Client<'a> {
    username: Option<&'a str>,
    client_id: &'a str,
}

/// The access a rule line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Permission {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Permission {
    fn from_word(word: &str) -> Option<Permission> {
        match word {
            "read" => Some(Permission::Read),
            "write" => Some(Permission::Write),
            "readwrite" => Some(Permission::ReadWrite),
            "deny" => Some(Permission::Deny),
            _ => None,
        }
    }

    fn grants(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Permission::ReadWrite, _)
                | (Permission::Read, Access::Read)
                | (Permission::Write, Access::Write)
        )
    }
}

/// One level of a rule filter, split once at load time so checks never re-parse the rule.
#[derive(Debug)]
enum Level {
    Literal(Box<str>),
    /// `+`
    SingleWildcard,
    /// `#`, always the last level.
    MultiWildcard,
    /// `%u` in a `pattern` line.
    Username,
    /// `%c` in a `pattern` line.
    ClientId,
}

impl Level {
    /// Whether this non-wildcard level equals `text` for this client.
    fn equals(&self, text: &str, client: Client<'_>) -> bool {
        match self {
            Level::Literal(literal) => **literal == *text,
            Level::Username => client.username == Some(text),
            Level::ClientId => client.client_id == text,
            Level::SingleWildcard | Level::MultiWildcard => false,
        }
    }
}

/// How a filter's `%u`/`%c` levels resolve for a given client.
#[derive(PartialEq, Eq)]
enum Binding {
    /// Nothing to substitute, or every substitution is safe.
    Bound,
    /// `%u` with no username: the rule does not concern this client (Mosquitto skips it).
    Unbound,
    /// The substitution could escape the client's own level; fail closed.
    Unsafe,
}

#[derive(Debug)]
struct Filter {
    levels: Box<[Level]>,
    uses_username: bool,
    uses_client_id: bool,
}

impl Filter {
    /// Splits and validates a rule's topic; `%u`/`%c` are substitutions only in `pattern` lines.
    fn parse(topic: &str, substitute: bool) -> Result<Filter, &'static str> {
        let count = topic.split('/').count();
        let levels = topic
            .split('/')
            .enumerate()
            .map(|(index, text)| parse_level(text, index + 1 == count, substitute))
            .collect::<Result<Box<[Level]>, _>>()?;
        let uses_username = levels.iter().any(|level| matches!(level, Level::Username));
        let uses_client_id = levels.iter().any(|level| matches!(level, Level::ClientId));
        Ok(Filter { levels, uses_username, uses_client_id })
    }

    fn binding(&self, client: Client<'_>) -> Binding {
        if self.uses_username {
            match client.username {
                None => return Binding::Unbound,
                Some(name) if !is_safe_identity(name) => return Binding::Unsafe,
                Some(_) => {}
            }
        }
        if self.uses_client_id && !is_safe_identity(client.client_id) {
            return Binding::Unsafe;
        }
        Binding::Bound
    }

    fn grant_applies(&self, client: Client<'_>, matches: impl Fn(&Filter) -> bool) -> bool {
        self.binding(client) == Binding::Bound && matches(self)
    }

    fn deny_applies(&self, client: Client<'_>, matches: impl Fn(&Filter) -> bool) -> bool {
        match self.binding(client) {
            Binding::Bound => matches(self),
            Binding::Unbound => false,
            Binding::Unsafe => true,
        }
    }

    /// [MQTT-4.7.2-1]: only a rule that names the `$` level literally reaches `$` topics.
    fn reaches(&self, target: &str) -> bool {
        !target.starts_with('$') || matches!(self.levels.first(), Some(Level::Literal(_)))
    }

    /// Does this rule filter match the topic name?
    fn matches_topic(&self, topic: &str, client: Client<'_>) -> bool {
        if !self.reaches(topic) {
            return false;
        }
        let mut names = topic.split('/');
        for level in self.levels.iter() {
            match (level, names.next()) {
                (Level::MultiWildcard, _) => return true,
                (_, None) => return false,
                (Level::SingleWildcard, Some(_)) => {}
                (exact, Some(name)) if !exact.equals(name, client) => return false,
                (_, Some(_)) => {}
            }
        }
        names.next().is_none()
    }

    /// Is every topic name the subscription filter can match also matched by this rule filter?
    fn covers_filter(&self, filter: &str, client: Client<'_>) -> bool {
        if !self.reaches(filter) {
            return false;
        }
        let mut subs = filter.split('/');
        for level in self.levels.iter() {
            match (level, subs.next()) {
                (Level::MultiWildcard, _) => return true,
                (_, None) | (_, Some("#")) => return false,
                (Level::SingleWildcard, Some(_)) => {}
                (exact, Some(sub)) if !exact.equals(sub, client) => return false,
                (_, Some(_)) => {}
            }
        }
        subs.next().is_none()
    }
}

fn parse_level(text: &str, last: bool, substitute: bool) -> Result<Level, &'static str> {
    match text {
        "#" if last => Ok(Level::MultiWildcard),
        "+" => Ok(Level::SingleWildcard),
        "%u" if substitute => Ok(Level::Username),
        "%c" if substitute => Ok(Level::ClientId),
        _ if text.contains('#') => Err("'#' must be alone in the last level"),
        _ if text.contains('+') => Err("'+' must be alone in its level"),
        _ if substitute && (text.contains("%u") || text.contains("%c")) => {
            Err("%u and %c must be a whole topic level")
        }
        _ => Ok(Level::Literal(text.into())),
    }
}

#[derive(Debug)]
struct Rule {
    filter: Filter,
    permission: Permission,
}

/// One section's rules, with denies kept apart so they can be checked before any grant.
#[derive(Debug, Default)]
struct RuleSet {
    denies: Vec<Filter>,
    grants: Vec<Rule>,
}

impl RuleSet {
    fn push(&mut self, rule: Rule) {
        match rule.permission {
            Permission::Deny => self.denies.push(rule.filter),
            _ => self.grants.push(rule),
        }
    }
}

/// A username or client id that can stand for exactly one topic level of its own.
fn is_safe_identity(identity: &str) -> bool {
    !identity.is_empty() && !identity.contains(['+', '#', '/'])
}

/// A topic name as PUBLISH carries it: non-empty and free of wildcards.
fn is_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#'])
}

/// A valid topic filter: non-empty, `+` and `#` alone in their level, `#` last [MQTT-4.7.1].
fn is_topic_filter(filter: &str) -> bool {
    let count = filter.split('/').count();
    !filter.is_empty()
        && filter.split('/').enumerate().all(|(index, level)| match level {
            "+" => true,
            "#" => index + 1 == count,
            _ => !level.contains(['+', '#']),
        })
}

/// The filter to check for a SUBSCRIBE: the inner one of `$share/<name>/<filter>` [MQTT-4.8.2].
fn subscription_filter(filter: &str) -> Option<&str> {
    let inner = match filter.strip_prefix("$share/") {
        None => filter,
        Some(shared) => {
            let (name, inner) = shared.split_once('/')?;
            if name.is_empty() || name.contains(['+', '#']) {
                return None;
            }
            inner
        }
    };
    is_topic_filter(inner).then_some(inner)
}

/// Where a line came from, for error messages.
struct LineRef<'a> {
    origin: &'a str,
    line: usize,
}

enum Line {
    Blank,
    User(String),
    Topic(Rule),
    Pattern(Rule),
}

fn parse_line(raw: &str, at: &LineRef<'_>) -> Result<Line, AclError> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(Line::Blank);
    }
    let (directive, rest) = split_word(line);
    match directive {
        "user" if rest.is_empty() => {
            Err(AclError::MissingUsername { origin: at.origin.to_owned(), line: at.line })
        }
        "user" => Ok(Line::User(rest.to_owned())),
        "topic" => parse_rule(rest, false, at).map(Line::Topic),
        "pattern" => parse_rule(rest, true, at).map(Line::Pattern),
        _ => Err(AclError::UnknownDirective {
            origin: at.origin.to_owned(),
            line: at.line,
            directive: directive.to_owned(),
        }),
    }
}

/// Parses `[access] <topic>`; the topic is the rest of the line and may contain spaces, so the
/// access word can be left out only when the topic is a single word (as in Mosquitto).
fn parse_rule(rest: &str, pattern: bool, at: &LineRef<'_>) -> Result<Rule, AclError> {
    let (first, remainder) = split_word(rest);
    let (permission, topic) = if remainder.is_empty() {
        if first.is_empty() || Permission::from_word(first).is_some() {
            return Err(AclError::MissingTopic { origin: at.origin.to_owned(), line: at.line });
        }
        (Permission::ReadWrite, first)
    } else {
        let permission = Permission::from_word(first).ok_or_else(|| AclError::UnknownAccess {
            origin: at.origin.to_owned(),
            line: at.line,
            access: first.to_owned(),
        })?;
        (permission, remainder)
    };
    let filter = Filter::parse(topic, pattern).map_err(|reason| AclError::InvalidTopic {
        origin: at.origin.to_owned(),
        line: at.line,
        topic: topic.to_owned(),
        reason,
    })?;
    if pattern && !filter.uses_username && !filter.uses_client_id {
        // Mosquitto warns too: such a pattern applies to every client, which is rarely the intent.
        tracing::warn!("{}:{}: pattern \"{}\" contains neither %u nor %c", at.origin, at.line, topic);
    }
    Ok(Rule { filter, permission })
}

/// Splits off the first whitespace-delimited word; the rest has its leading whitespace removed.
fn split_word(text: &str) -> (&str, &str) {
    match text.find(char::is_whitespace) {
        Some(end) => (&text[..end], text[end..].trim_start()),
        None => (text, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn acl(text: &str) -> Acl {
        Acl::parse(text, "acl.conf").expect("valid ACL")
    }

    fn parse_error(text: &str) -> AclError {
        Acl::parse(text, "acl.conf").expect_err("invalid ACL")
    }

    fn can_read(acl: &Acl, user: Option<&str>, topic: &str) -> bool {
        acl.allows_topic(user, "client", topic, Access::Read)
    }

    fn can_write(acl: &Acl, user: Option<&str>, topic: &str) -> bool {
        acl.allows_topic(user, "client", topic, Access::Write)
    }

    fn can_subscribe(acl: &Acl, user: Option<&str>, filter: &str) -> bool {
        acl.allows_subscription(user, "client", filter)
    }

    // mosquitto.conf(5): "The first set of topics are applied to anonymous clients"; `topic` lines
    // after `user <name>` apply to that user only; everything not granted is denied.
    #[test]
    fn anonymous_and_user_sections_are_separate() {
        let acl = acl("topic public/#\nuser alice\ntopic alice/#\nuser bob\ntopic bob/#\n");
        assert!(can_read(&acl, None, "public/news"));
        assert!(!can_read(&acl, None, "alice/inbox"));
        assert!(can_read(&acl, Some("alice"), "alice/inbox"));
        assert!(!can_read(&acl, Some("alice"), "public/news"), "anonymous rules are not for users");
        assert!(!can_read(&acl, Some("alice"), "bob/inbox"));
        assert!(can_write(&acl, Some("bob"), "bob/outbox"));
        assert!(!can_read(&acl, Some("carol"), "alice/inbox"), "a user without a section gets nothing");
    }

    // Mosquitto's add__acl appends to an existing user's list, so repeated sections merge.
    #[test]
    fn repeated_user_sections_merge() {
        let acl = acl("user alice\ntopic a\nuser bob\ntopic b\nuser alice\ntopic c\n");
        assert!(can_read(&acl, Some("alice"), "a"));
        assert!(can_read(&acl, Some("alice"), "c"));
        assert!(!can_read(&acl, Some("alice"), "b"));
    }

    // mosquitto.conf(5): the username is the rest of the `user` line.
    #[test]
    fn username_may_contain_spaces() {
        let acl = acl("user john smith\ntopic js/#\n");
        assert!(can_read(&acl, Some("john smith"), "js/x"));
        assert!(!can_read(&acl, Some("john"), "js/x"));
    }

    // mosquitto.conf(5): "if not given then the access is read/write".
    #[test]
    fn access_defaults_to_readwrite() {
        let acl = acl("topic a/b\n");
        assert!(can_read(&acl, None, "a/b"));
        assert!(can_write(&acl, None, "a/b"));
    }

    // mosquitto.conf(5): the access type is controlled using read, write or readwrite.
    #[test]
    fn read_only_write_only_and_readwrite() {
        let acl = acl("topic read r\ntopic write w\ntopic readwrite rw\n");
        assert!(can_read(&acl, None, "r") && !can_write(&acl, None, "r"));
        assert!(can_write(&acl, None, "w") && !can_read(&acl, None, "w"));
        assert!(can_read(&acl, None, "rw") && can_write(&acl, None, "rw"));
    }

    // mosquitto.conf(5): "deny ... explicitly deny access to a topic that would otherwise be granted
    // by a broader read/write/readwrite statement"; deny blocks both directions, whatever the order.
    #[test]
    fn deny_overrides_a_broader_grant() {
        let acl = acl("topic a/#\ntopic deny a/secret/#\nuser u\ntopic deny x/private\ntopic x/+\n");
        assert!(can_read(&acl, None, "a/open"));
        assert!(!can_read(&acl, None, "a/secret"));
        assert!(!can_write(&acl, None, "a/secret/key"));
        assert!(can_write(&acl, Some("u"), "x/public"));
        assert!(!can_read(&acl, Some("u"), "x/private"));
    }

    // Tern's rule (module docs): a `pattern deny` also takes back a user-section grant.
    #[test]
    fn pattern_deny_overrides_a_user_grant() {
        let acl = acl("user u\ntopic home/#\npattern deny home/%u/locked\n");
        assert!(can_read(&acl, Some("u"), "home/u/open"));
        assert!(!can_read(&acl, Some("u"), "home/u/locked"));
    }

    // mosquitto.conf(5): %u is the username; pattern ACLs apply to all users even after a `user` line.
    #[test]
    fn pattern_substitutes_username() {
        let acl = acl("user admin\ntopic #\npattern write sensor/%u/data\n");
        assert!(can_write(&acl, Some("alice"), "sensor/alice/data"));
        assert!(!can_write(&acl, Some("alice"), "sensor/bob/data"));
        assert!(!can_read(&acl, Some("alice"), "sensor/alice/data"));
        assert!(can_write(&acl, Some("admin"), "sensor/admin/data"));
    }

    // mosquitto.conf(5): %c is the client id; patterns apply to anonymous clients too.
    #[test]
    fn pattern_substitutes_client_id() {
        let acl = acl("pattern readwrite devices/%c/#\n");
        assert!(acl.allows_topic(None, "dev1", "devices/dev1/temp", Access::Write));
        assert!(acl.allows_topic(Some("u"), "dev1", "devices/dev1", Access::Read));
        assert!(!acl.allows_topic(None, "dev1", "devices/dev2/temp", Access::Write));
    }

    // Mosquitto skips a pattern containing %u when the client has no username (ucount && !username).
    #[test]
    fn username_pattern_never_matches_without_username() {
        let acl = acl("pattern readwrite users/%u/#\npattern deny open/%u\ntopic open/#\n");
        assert!(!can_read(&acl, None, "users/"));
        assert!(!can_read(&acl, None, "users//x"));
        assert!(can_read(&acl, None, "open/x"), "a %u deny does not concern anonymous clients either");
    }

    // Mosquitto refuses identities containing + or # for patterns ("dangerous username/client id")
    // so a client cannot widen its subtree; a '/' would let it reach another level, and an empty one
    // names no level of its own. Grants fail closed (no match), denies fail closed (match all).
    #[test]
    fn unsafe_identities_never_gain_through_patterns() {
        let acl = acl("pattern readwrite users/%u/#\npattern readwrite devices/%c\n");
        for name in ["+", "#", "a/b", "a+b", ""] {
            assert!(!acl.allows_topic(Some(name), "c", "users/x/y", Access::Read), "username {name:?}");
            assert!(!acl.allows_topic(Some(name), "c", "users/a/b", Access::Read), "username {name:?}");
            assert!(!acl.allows_subscription(Some(name), "c", "users/#"), "username {name:?}");
            assert!(!acl.allows_topic(None, name, "devices/x", Access::Write), "client id {name:?}");
        }
        assert!(acl.allows_topic(Some("safe"), "c", "users/safe/y", Access::Read));
    }

    #[test]
    fn unsafe_identity_is_caught_by_every_deny_pattern() {
        let acl = acl("topic #\npattern deny quarantine/%c\n");
        assert!(acl.allows_topic(None, "dev1", "anything", Access::Write));
        assert!(!acl.allows_topic(None, "dev1", "quarantine/dev1", Access::Write));
        assert!(!acl.allows_topic(None, "dev/1", "anything", Access::Write));
        assert!(!acl.allows_subscription(None, "#", "anything"));
    }

    // Mosquitto treats %u/%c as substitutions only in `pattern` lines.
    #[test]
    fn substitutions_are_literal_in_topic_lines() {
        let acl = acl("topic a/%u\n");
        assert!(!can_read(&acl, None, "a/client"));
        assert!(can_read(&acl, None, "a/%u"));
    }

    // [MQTT-4.7.2-1]: a filter starting with a wildcard does not match topics starting with '$'.
    #[test]
    fn dollar_topics_need_a_literal_rule() {
        let acl = acl("topic #\ntopic +/info\npattern read %c/#\nuser ops\ntopic read $SYS/#\n");
        assert!(can_read(&acl, None, "anything/at/all"));
        assert!(!can_read(&acl, None, "$SYS/broker/uptime"));
        assert!(!can_read(&acl, None, "$SYS/info"));
        assert!(!acl.allows_topic(None, "$SYS", "$SYS/broker/uptime", Access::Read));
        assert!(can_read(&acl, Some("ops"), "$SYS/broker/uptime"));
    }

    // Dead letters (issue 17) follow the same rule: only a grant naming `$DLQ` reads them.
    #[test]
    fn dead_letters_need_an_explicit_grant() {
        let acl = acl("topic #\nuser ops\ntopic read $DLQ/#\n");
        assert!(!can_read(&acl, None, "$DLQ/queue_full/a/b"));
        assert!(can_read(&acl, Some("ops"), "$DLQ/queue_full/a/b"));
        assert!(!acl.allows_topic(Some("ops"), "c", "$DLQ/x", Access::Write), "read only");
    }

    // [MQTT-4.7.1-2]: '#' also matches the parent level, so `a/#` matches `a`; [MQTT-4.7.1-3]: '+'
    // matches exactly one level, which may be empty.
    #[test]
    fn standard_wildcard_matching() {
        let acl = acl("topic a/#\ntopic b/+\ntopic c/+/d\n");
        assert!(can_read(&acl, None, "a"));
        assert!(can_read(&acl, None, "a/x/y/z"));
        assert!(!can_read(&acl, None, "ab"));
        assert!(can_read(&acl, None, "b/x"));
        assert!(can_read(&acl, None, "b/"));
        assert!(!can_read(&acl, None, "b"));
        assert!(!can_read(&acl, None, "b/x/y"));
        assert!(can_read(&acl, None, "c/x/d"));
        assert!(!can_read(&acl, None, "c/x/e"));
    }

    // [MQTT-4.7.3-1] topic names are not empty; [MQTT-3.3.2-2] they carry no wildcards.
    #[test]
    fn invalid_topic_names_are_refused() {
        let acl = acl("topic #\n");
        assert!(!can_write(&acl, None, ""));
        assert!(!can_write(&acl, None, "a/+"));
        assert!(!can_write(&acl, None, "a/#"));
    }

    // Mosquitto's sub_acl_check / mosquitto_sub_matches_acl: a subscription is allowed when it is a
    // subset of the rule filter.
    #[test]
    fn subscription_must_be_a_subset_of_a_read_rule() {
        let hash = acl("topic read a/#\n");
        assert!(can_subscribe(&hash, None, "a/b/+"));
        assert!(can_subscribe(&hash, None, "a/#"));
        assert!(can_subscribe(&hash, None, "a"));
        assert!(!can_subscribe(&hash, None, "#"));
        assert!(!can_subscribe(&hash, None, "+/b"));

        let plus = acl("topic read a/+\n");
        assert!(can_subscribe(&plus, None, "a/b"));
        assert!(can_subscribe(&plus, None, "a/+"));
        assert!(!can_subscribe(&plus, None, "a/#"));
        assert!(!can_subscribe(&plus, None, "a/b/c"));
        assert!(!can_subscribe(&plus, None, "a"));

        // mosquitto_sub_matches_acl: "+ doesn't match #", even where `+/#` would cover `#`.
        let nested = acl("topic read +/#\n");
        assert!(can_subscribe(&nested, None, "a/#"));
        assert!(!can_subscribe(&nested, None, "#"));

        let exact = acl("topic read a/b\n");
        assert!(can_subscribe(&exact, None, "a/b"));
        assert!(!can_subscribe(&exact, None, "a/+"));
        assert!(!can_subscribe(&exact, None, "a/#"));
    }

    // A subscription is a request to receive: only read and readwrite rules grant it.
    #[test]
    fn subscription_needs_read_access() {
        let acl = acl("topic write w/#\ntopic rw/#\n");
        assert!(!can_subscribe(&acl, None, "w/x"));
        assert!(can_subscribe(&acl, None, "rw/x"));
    }

    // Mosquitto's dynamic-security plugin applies a deny rule to a SUBSCRIBE when the subscription is
    // a subset of it (sub_acl_check); a deny that only overlaps is enforced per message instead.
    #[test]
    fn deny_refuses_a_subscription_it_covers() {
        let acl = acl("topic read a/#\ntopic deny a/secret/#\n");
        assert!(!can_subscribe(&acl, None, "a/secret/+"));
        assert!(!can_subscribe(&acl, None, "a/secret"));
        assert!(can_subscribe(&acl, None, "a/#"));
        assert!(!can_read(&acl, None, "a/secret/key"), "the overlapping part is withheld per message");
    }

    // mosquitto_sub_matches_acl_with_pattern: %u and %c stand for the identity, literally.
    #[test]
    fn subscription_with_patterns() {
        let acl = acl("pattern read users/%u/#\n");
        assert!(can_subscribe(&acl, Some("alice"), "users/alice/#"));
        assert!(!can_subscribe(&acl, Some("alice"), "users/+/#"));
        assert!(!can_subscribe(&acl, None, "users/alice/#"));
    }

    // [MQTT-4.7.2-1] as applied by mosquitto_sub_matches_acl: `#` does not cover `$SYS/#`.
    #[test]
    fn dollar_subscriptions_need_a_literal_rule() {
        let acl = acl("topic read #\nuser ops\ntopic read $SYS/#\n");
        assert!(can_subscribe(&acl, None, "#"));
        assert!(!can_subscribe(&acl, None, "$SYS/#"));
        assert!(can_subscribe(&acl, Some("ops"), "$SYS/broker/+"));
    }

    // [MQTT-4.8.2]: `$share/<name>/<filter>` subscribes to <filter>; the share name has no wildcards.
    #[test]
    fn shared_subscriptions_check_the_inner_filter() {
        let acl = acl("topic read a/+\n");
        assert!(can_subscribe(&acl, None, "$share/g/a/+"));
        assert!(!can_subscribe(&acl, None, "$share/g/a/#"));
        assert!(!can_subscribe(&acl, None, "$share/g"));
        assert!(!can_subscribe(&acl, None, "$share//a/b"));
        assert!(!can_subscribe(&acl, None, "$share/+/a/b"));
    }

    // [MQTT-4.7.1-2, MQTT-4.7.1-3, MQTT-4.7.3-1]: malformed filters are refused, not matched.
    #[test]
    fn invalid_subscription_filters_are_refused() {
        let acl = acl("topic read #\n");
        for filter in ["", "a/#/b", "a+", "a/b#", "#/"] {
            assert!(!can_subscribe(&acl, None, filter), "{filter:?}");
        }
    }

    #[test]
    fn unknown_directive_names_the_line() {
        let error = parse_error("topic a\n\ntopc b\n");
        assert!(
            matches!(&error, AclError::UnknownDirective { line: 3, directive, .. } if directive == "topc")
        );
        assert_eq!(error.to_string(), "acl.conf:3: unknown directive \"topc\"");
    }

    // Mosquitto 2.0: "Error: Empty topic in acl_file"; an access word alone is not a topic here.
    #[test]
    fn missing_topic_names_the_line() {
        for text in ["topic", "pattern  ", "topic read", "pattern deny"] {
            let error = parse_error(&format!("# header\n{text}\n"));
            assert!(matches!(error, AclError::MissingTopic { line: 2, .. }), "{text:?}");
            assert_eq!(error.to_string(), "acl.conf:2: missing topic");
        }
    }

    // Mosquitto 2.0: "Invalid topic access type"; a topic with spaces needs the access word.
    #[test]
    fn unknown_access_names_the_line() {
        let text = "\n\n\n\nuser u\ntopic a\ntopic reed a/b\n";
        let error = parse_error(text);
        assert!(matches!(&error, AclError::UnknownAccess { line: 7, access, .. } if access == "reed"));
        assert_eq!(error.to_string(), "acl.conf:7: unknown access \"reed\"");
        assert!(matches!(parse_error("topic my topic\n"), AclError::UnknownAccess { line: 1, .. }));
    }

    // Mosquitto 2.0: "Missing username in acl_file".
    #[test]
    fn missing_username_names_the_line() {
        let error = parse_error("topic a\nuser   \n");
        assert!(matches!(error, AclError::MissingUsername { line: 2, .. }));
        assert_eq!(error.to_string(), "acl.conf:2: missing username");
    }

    // Mosquitto 2.0 runs mosquitto_sub_topic_check on each rule ("Invalid ACL topic"); mosquitto.conf(5):
    // "The substitution pattern must be the only text for that level of hierarchy."
    #[test]
    fn invalid_rule_filters_name_the_line() {
        for (text, reason) in [
            ("topic a/#/b", "'#' must be alone in the last level"),
            ("topic read a#", "'#' must be alone in the last level"),
            ("topic a+/b", "'+' must be alone in its level"),
            ("pattern write dev_%c/x", "%u and %c must be a whole topic level"),
        ] {
            let error = parse_error(&format!("topic ok\n{text}\n"));
            assert!(
                matches!(&error, AclError::InvalidTopic { line: 2, reason: r, .. } if *r == reason),
                "{text}"
            );
            assert!(error.to_string().starts_with("acl.conf:2: invalid topic filter"), "{error}");
        }
    }

    // mosquitto.conf(5): lines starting with '#' are comments; blank lines and surrounding whitespace
    // (including CRLF line ends and tabs) are ignored.
    #[test]
    fn comments_blank_lines_and_whitespace() {
        let text =
            "# comment\r\n\r\n   \t\r\n   # indented comment\r\n\t topic \t read \t a/b \t\r\nuser  u \n";
        let acl = acl(text);
        assert!(can_read(&acl, None, "a/b"));
        assert!(!can_write(&acl, None, "a/b"));
        assert!(
            !can_read(&Acl::parse("", "empty").expect("empty ACL"), None, "x"),
            "an empty ACL denies all"
        );
    }

    // mosquitto.conf(5): the access word is required "unless <topic> contains a space character";
    // the topic is the rest of the line.
    #[test]
    fn rule_topic_may_contain_spaces() {
        let acl = acl("topic read  living room/temp  \n");
        assert!(can_read(&acl, None, "living room/temp"));
        assert!(!can_read(&acl, None, "living"));
        assert!(can_subscribe(&acl, None, "living room/temp"));
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "topic read a/#\nuser u\ntopic write b").expect("write");
        let acl = Acl::load(file.path()).expect("load");
        assert!(can_read(&acl, None, "a/x"));
        assert!(can_write(&acl, Some("u"), "b"));

        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.acl");
        let error = Acl::load(&missing).expect_err("missing file");
        assert!(matches!(error, AclError::Io { .. }));
        assert!(error.to_string().starts_with(&missing.display().to_string()));

        let mut bad = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(bad, "topic a\nbogus").expect("write");
        let error = Acl::load(bad.path()).expect_err("bad file");
        assert_eq!(error.to_string(), format!("{}:2: unknown directive \"bogus\"", bad.path().display()));
    }

    // Never panic on any input: odd bytes, lone wildcards and multi-byte characters.
    #[test]
    fn odd_input_does_not_panic() {
        let texts = [
            "topic /",
            "topic //",
            "topic +",
            "topic #",
            "pattern %",
            "pattern %u%c",
            "topic \u{a0}é/ü",
            "user \u{2003}",
            "pattern read %u",
            "topic read \u{0}",
            "\u{feff}topic a",
        ];
        for text in texts {
            if let Ok(acl) = Acl::parse(text, "fuzz") {
                for target in ["", "/", "//", "+", "#", "$", "é/ü", "a/b", "$share/", "$share/g/"] {
                    let _ = acl.allows_topic(Some("u"), "c", target, Access::Read);
                    let _ = acl.allows_topic(None, "", target, Access::Write);
                    let _ = acl.allows_subscription(Some(""), "c", target);
                }
            }
        }
    }
}
