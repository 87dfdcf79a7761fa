//! MQTT topic → NATS subject, for the JetStream sink.
//!
//! Each topic level becomes one subject token (`/` → `.`). NATS refuses in a publish subject
//! what MQTT allows in a level: an empty token, `.` inside it, whitespace, `*` and `>`. Those
//! bytes are percent-escaped (`%XX`, upper-case hex), as is `%` itself so the mapping stays
//! reversible, `$` (so no topic can reach NATS's `$JS.` / `$SYS.` API subjects) and every
//! control character; an empty level becomes the token `%` alone (no escape is one byte).
//! Everything else, UTF-8 included, is kept. Examples:
//!
//! | topic            | subject (no prefix)      |
//! |------------------|--------------------------|
//! | `sensors/t1/temp`| `sensors.t1.temp`        |
//! | `a.b/c d`        | `a%2Eb.c%20d`            |
//! | `/x//y`          | `%.x.%.y`                |
//! | `50%/>/*`        | `50%25.%3E.%2A`          |
//! | `$aws/things`    | `%24aws.things`          |

/// The subject of `topic` under `prefix` (tokens already valid, possibly empty).
pub fn subject(prefix: &str, topic: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + topic.len() + 8);
    out.push_str(prefix);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 || !prefix.is_empty() {
            out.push('.');
        }
        if level.is_empty() {
            out.push('%');
            continue;
        }
        for c in level.chars() {
            if c.is_ascii_control() || matches!(c, ' ' | '.' | '*' | '>' | '%' | '$') {
                out.push_str(&format!("%{:02X}", c as u32));
            } else {
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::subject;

    #[test]
    fn levels_become_tokens_and_refused_characters_are_escaped() {
        let cases = [
            ("sensors/t1/temp", "sensors.t1.temp"),
            ("a.b/c d", "a%2Eb.c%20d"),
            ("/x//y", "%.x.%.y"),
            ("x/", "x.%"),
            ("50%/>/*", "50%25.%3E.%2A"),
            ("$aws/things", "%24aws.things"),
            ("tab\there", "tab%09here"),
            ("ünï/😀", "ünï.😀"),
        ];
        for (topic, want) in cases {
            assert_eq!(subject("", topic), want, "{topic}");
        }
        assert_eq!(subject("edge.site1", "a/b"), "edge.site1.a.b");
        assert_eq!(subject("p", "/"), "p.%.%");
    }

    /// Every token of every mapped subject is one NATS accepts in a publish, and the mapping
    /// is one-to-one (percent-decoding gives the topic back).
    #[test]
    fn every_mapped_token_is_valid_and_the_mapping_reverses() {
        let topics = ["a", "a/b", "a//b", " ", ".", "*", ">", "%", "%2E", "a.%/b", "$SYS/x", "\u{7f}"];
        for topic in topics {
            let s = subject("", topic);
            for token in s.split('.') {
                assert!(crate::config::jetstream::is_subject_token(token), "{topic:?} -> {s:?}");
            }
            let back: Vec<String> = s.split('.').map(unescape).collect();
            assert_eq!(back.join("/"), topic);
        }
    }

    fn unescape(token: &str) -> String {
        if token == "%" {
            return String::new();
        }
        let mut out = Vec::new();
        let bytes = token.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(&token[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }
}
