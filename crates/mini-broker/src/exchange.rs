//! Exchanges and routing (spec 3.1.3): where a published message goes.
//!
//! Each exchange keeps its bindings; [`Exchange::route`] turns a routing key (and, for headers
//! exchanges, the message headers) into the destinations of the bindings that match:
//!
//! | kind    | a binding matches when                                               |
//! |---------|----------------------------------------------------------------------|
//! | direct  | its key equals the routing key                                       |
//! | fanout  | always                                                               |
//! | topic   | its pattern matches the key word by word: `*` one word, `#` zero or more |
//! | headers | its arguments match the headers: `x-match` `all` (default) or `any`  |

use std::collections::HashMap;

use amqp_codec::{FieldTable, FieldValue, ShortString};

/// The exchange types RabbitMQ ships with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Exact routing-key match.
    Direct,
    /// Every bound queue.
    Fanout,
    /// Dotted word patterns with `*` and `#`.
    Topic,
    /// Header table matching.
    Headers,
}

impl ExchangeKind {
    /// The kind named in exchange.declare, if it is one this broker knows.
    pub fn parse(name: &str) -> Option<ExchangeKind> {
        match name {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    /// The name as exchange.declare and the management API spell it.
    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads: a queue, or another exchange (RabbitMQ's exchange-to-exchange
/// bindings).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A queue, by name.
    Queue(ShortString),
    /// An exchange, by name.
    Exchange(ShortString),
}

impl Destination {
    /// The destination's name.
    pub fn name(&self) -> &ShortString {
        match self {
            Destination::Queue(name) | Destination::Exchange(name) => name,
        }
    }

    /// "queue" or "exchange", as the management API says it.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Destination::Queue(_) => "queue",
            Destination::Exchange(_) => "exchange",
        }
    }
}

/// One binding of an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Where matching messages go.
    pub destination: Destination,
    /// The binding key (a pattern for topic exchanges).
    pub routing_key: ShortString,
    /// Binding arguments (the match table of headers exchanges).
    pub arguments: FieldTable,
}

/// An exchange and its bindings.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The name ("" is the default exchange).
    pub name: ShortString,
    /// How it routes.
    pub kind: ExchangeKind,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Clients may not publish to it directly.
    pub internal: bool,
    /// Declaration arguments (alternate-exchange, ...).
    pub arguments: FieldTable,
    bindings: Vec<Binding>,
    /// For direct exchanges: binding key to the indexes of its bindings.
    direct_index: HashMap<ShortString, Vec<usize>>,
}

impl Exchange {
    /// A new exchange without bindings.
    pub fn new(
        name: ShortString,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Exchange {
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            bindings: Vec::new(),
            direct_index: HashMap::new(),
        }
    }

    /// The bindings, in the order they were made.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// Adds a binding; binding twice is a no-op, as in RabbitMQ.
    pub fn bind(&mut self, binding: Binding) {
        if self.bindings.iter().any(|b| same_binding(b, &binding)) {
            return;
        }
        self.bindings.push(binding);
        self.reindex();
    }

    /// Whether this very binding exists.
    pub fn has_binding(&self, binding: &Binding) -> bool {
        self.bindings.iter().any(|b| same_binding(b, binding))
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&mut self, binding: &Binding) -> bool {
        let before = self.bindings.len();
        self.bindings.retain(|b| !same_binding(b, binding));
        let removed = self.bindings.len() != before;
        if removed {
            self.reindex();
        }
        removed
    }

    /// Removes every binding to `destination`; returns how many.
    pub fn unbind_destination(&mut self, destination: &Destination) -> usize {
        let before = self.bindings.len();
        self.bindings.retain(|b| &b.destination != destination);
        let removed = before - self.bindings.len();
        if removed > 0 {
            self.reindex();
        }
        removed
    }

    fn reindex(&mut self) {
        self.direct_index.clear();
        if self.kind == ExchangeKind::Direct {
            for (i, binding) in self.bindings.iter().enumerate() {
                self.direct_index
                    .entry(binding.routing_key.clone())
                    .or_default()
                    .push(i);
            }
        }
    }

    /// Calls `found` with the destination of every binding that matches.
    pub fn route(
        &self,
        routing_key: &ShortString,
        headers: Option<&FieldTable>,
        mut found: impl FnMut(&Destination),
    ) {
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(indexes) = self.direct_index.get(routing_key) {
                    for &i in indexes {
                        if let Some(binding) = self.bindings.get(i) {
                            found(&binding.destination);
                        }
                    }
                }
            }
            ExchangeKind::Fanout => self.bindings.iter().for_each(|b| found(&b.destination)),
            ExchangeKind::Topic => {
                for binding in &self.bindings {
                    if topic_matches(binding.routing_key.as_bytes(), routing_key.as_bytes()) {
                        found(&binding.destination);
                    }
                }
            }
            ExchangeKind::Headers => {
                let empty = FieldTable::new();
                let headers = headers.unwrap_or(&empty);
                for binding in &self.bindings {
                    if headers_match(&binding.arguments, headers) {
                        found(&binding.destination);
                    }
                }
            }
        }
    }
}

/// Two bindings are the same when destination, key and arguments agree (RabbitMQ's identity
/// of a binding).
fn same_binding(a: &Binding, b: &Binding) -> bool {
    a.destination == b.destination
        && a.routing_key == b.routing_key
        && a.arguments.same_entries(&b.arguments)
}

/// Whether a topic binding pattern matches a routing key. Words are separated by `.`; `*`
/// matches exactly one word and `#` zero or more words. As in RabbitMQ, the empty string has
/// no words at all (so `*` does not match it), while `a.` has two, the second one empty.
pub fn topic_matches(pattern: &[u8], key: &[u8]) -> bool {
    words_match(words(pattern), words(key))
}

/// Some words: none for the empty string.
fn words(s: &[u8]) -> Option<&[u8]> {
    (!s.is_empty()).then_some(s)
}

/// The first word of some words, and the words after it (None: no more words).
fn split_word(words: &[u8]) -> (&[u8], Option<&[u8]>) {
    match words.iter().position(|&b| b == b'.') {
        Some(dot) => (&words[..dot], Some(&words[dot + 1..])),
        None => (words, None),
    }
}

/// Matches words without collecting them (no allocation per binding and message). `None`
/// is "no words left"; `Some(s)` is one or more words (`s` may be one empty word).
fn words_match(pattern: Option<&[u8]>, key: Option<&[u8]>) -> bool {
    let Some(pattern_words) = pattern else {
        return key.is_none();
    };
    let (word, pattern_rest) = split_word(pattern_words);
    if word == b"#" {
        // `#` takes no word, or one word and stays.
        return words_match(pattern_rest, key)
            || key.is_some_and(|k| words_match(pattern, split_word(k).1));
    }
    match key {
        None => false,
        Some(key_words) => {
            let (first, key_rest) = split_word(key_words);
            (word == b"*" || word == first) && words_match(pattern_rest, key_rest)
        }
    }
}

/// Whether a headers binding's arguments match a message's headers.
///
/// `x-match` is `all` (every argument present with an equal value; the default), `any` (at
/// least one), or RabbitMQ 3.10's `all-with-x` / `any-with-x`, which also compare arguments
/// whose names start with `x-`. A `void` argument matches on the key alone.
pub fn headers_match(arguments: &FieldTable, headers: &FieldTable) -> bool {
    let mode: &[u8] = match arguments.get("x-match") {
        Some(FieldValue::LongString(mode)) => mode.as_bytes(),
        _ => b"all",
    };
    let (any, with_x) = match mode {
        b"any" => (true, false),
        b"any-with-x" => (true, true),
        b"all-with-x" => (false, true),
        _ => (false, false),
    };
    let mut considered = arguments.iter().filter(|(key, _)| {
        key.as_bytes() != b"x-match" && (with_x || !key.as_bytes().starts_with(b"x-"))
    });
    let matches = |(key, value): (&ShortString, &FieldValue)| match headers.get(&key.to_str_lossy())
    {
        Some(found) => matches!(value, FieldValue::Void) || found == value,
        None => false,
    };
    if any {
        considered.any(matches)
    } else {
        considered.all(matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_star_matches_exactly_one_word() {
        assert!(topic_matches(b"*.orange.*", b"quick.orange.rabbit"));
        assert!(!topic_matches(b"*.orange.*", b"quick.orange.male.rabbit"));
        assert!(!topic_matches(b"*.orange.*", b"orange"));
        assert!(topic_matches(b"*.*.rabbit", b"lazy.pink.rabbit"));
    }

    #[test]
    fn topic_hash_matches_zero_or_more_words() {
        assert!(topic_matches(b"lazy.#", b"lazy"));
        assert!(topic_matches(b"lazy.#", b"lazy.orange.male.rabbit"));
        assert!(topic_matches(b"#", b"anything.at.all"));
        assert!(topic_matches(b"#", b""));
        assert!(topic_matches(b"#.rabbit", b"rabbit"));
        assert!(topic_matches(b"a.#.z", b"a.z"));
        assert!(topic_matches(b"a.#.z", b"a.b.c.z"));
        assert!(!topic_matches(b"a.#.z", b"a.b.c"));
        assert!(!topic_matches(b"lazy.#", b"quick.brown.fox"));
    }

    #[test]
    fn topic_literal_pattern_is_an_exact_match() {
        assert!(topic_matches(b"kern.critical", b"kern.critical"));
        assert!(!topic_matches(b"kern.critical", b"kern.info"));
        assert!(topic_matches(b"", b""));
    }

    #[test]
    fn topic_empty_key_has_no_words() {
        assert!(!topic_matches(b"*", b""));
        assert!(!topic_matches(b"*.#", b""));
        assert!(topic_matches(b"#", b""));
        assert!(topic_matches(b"a.*", b"a."));
        assert!(!topic_matches(b"", b"a"));
    }

    #[test]
    fn headers_all_and_any() {
        let headers: FieldTable = [("format", "pdf"), ("type", "report")]
            .into_iter()
            .collect();
        let mut all: FieldTable = [("format", "pdf"), ("type", "report")]
            .into_iter()
            .collect();
        all.insert("x-match", "all");
        assert!(headers_match(&all, &headers));
        let mut any: FieldTable = [("format", "zip"), ("type", "report")]
            .into_iter()
            .collect();
        any.insert("x-match", "any");
        assert!(headers_match(&any, &headers));
        any.insert("x-match", "all");
        assert!(!headers_match(&any, &headers));
        let none: FieldTable = [("x-match", "any")].into_iter().collect();
        assert!(
            !headers_match(&none, &headers),
            "any over no arguments matches nothing"
        );
    }

    #[test]
    fn direct_routes_by_exact_key_and_dedupes_bindings() {
        let mut exchange = Exchange::new(
            "logs".into(),
            ExchangeKind::Direct,
            false,
            false,
            false,
            FieldTable::new(),
        );
        let bind = |queue: &str, key: &str| Binding {
            destination: Destination::Queue(queue.into()),
            routing_key: key.into(),
            arguments: FieldTable::new(),
        };
        exchange.bind(bind("q1", "error"));
        exchange.bind(bind("q1", "error"));
        exchange.bind(bind("q2", "info"));
        let mut found = Vec::new();
        exchange.route(&"error".into(), None, |d| found.push(d.clone()));
        assert_eq!(found, vec![Destination::Queue("q1".into())]);
        assert!(exchange.unbind(&bind("q1", "error")));
        found.clear();
        exchange.route(&"error".into(), None, |d| found.push(d.clone()));
        assert!(found.is_empty());
    }
}
