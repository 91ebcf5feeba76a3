//! Maps key paths of a YAML document to the line they are written on.
//!
//! serde only reports where the *first* syntax or type error is; validation errors
//! (an unknown upstream, a bad regex) are found later on typed values that no longer
//! know their position. This index is built once per load from the parser's marked
//! events so every error can name its line.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::error::{KeyPath, Seg};

enum Frame {
    Map { key: Option<String> },
    Seq { next: usize },
}

/// Line numbers (1-based) by key path.
#[derive(Default)]
pub struct LineIndex {
    lines: HashMap<KeyPath, usize>,
}

struct Builder {
    path: Vec<Seg>,
    stack: Vec<Frame>,
    index: LineIndex,
}

impl Builder {
    /// Called for every node; decides whether it is a mapping key or a value.
    /// Returns true when the node is a value (so containers must be pushed).
    fn on_node(&mut self, scalar: Option<&str>, line: usize) -> bool {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) if key.is_none() => {
                // A mapping key. Non-scalar keys are not used by our schema; name them anyway.
                let k = scalar.unwrap_or("?").to_owned();
                let mut p = self.path.clone();
                p.push(Seg::Key(k.clone()));
                self.index.lines.entry(KeyPath(p)).or_insert(line);
                *key = Some(k);
                false
            }
            Some(Frame::Map { key }) => {
                let k = key.clone().unwrap_or_default();
                self.path.push(Seg::Key(k));
                true
            }
            Some(Frame::Seq { next }) => {
                let i = *next;
                self.path.push(Seg::Index(i));
                self.index
                    .lines
                    .entry(KeyPath(self.path.clone()))
                    .or_insert(line);
                true
            }
            None => true,
        }
    }

    /// A value finished: pop its path segment and advance the parent.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => {
                *key = None;
                self.path.pop();
            }
            Some(Frame::Seq { next }) => {
                *next += 1;
                self.path.pop();
            }
            None => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        // yaml-rust2 markers count lines from 1.
        let line = mark.line();
        match ev {
            // `on_node` records the node (a side effect even when it returns false: a key).
            Event::Scalar(ref s, ..) if self.on_node(Some(s), line) => self.value_done(),
            Event::Alias(_) if self.on_node(None, line) => self.value_done(),
            Event::MappingStart(..) => {
                // Complex (mapping) keys are not part of our schema; they are still
                // pushed so the event stream stays balanced.
                self.on_node(None, line);
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                self.on_node(None, line);
                self.stack.push(Frame::Seq { next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

impl LineIndex {
    /// Builds the index; a document that fails to parse gives an empty index (the
    /// syntax error itself is reported by the deserializer with its own location).
    pub fn build(text: &str) -> LineIndex {
        let mut b = Builder {
            path: Vec::new(),
            stack: Vec::new(),
            index: LineIndex::default(),
        };
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut b, false);
        b.index
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &KeyPath) -> Option<usize> {
        let mut p = Some(path.clone());
        while let Some(cur) = p {
            if let Some(l) = self.lines.get(&cur) {
                return Some(*l);
            }
            p = cur.parent();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_nested_keys_and_items() {
        let text = "a: 1\nhosts:\n  galion.app:\n    routes:\n      - name: x\n        upstream: u\n      - name: y\n        upstream: v\n";
        let idx = LineIndex::build(text);
        let p = KeyPath::root().key("hosts").key("galion.app").key("routes");
        assert_eq!(idx.line_of(&KeyPath::root().key("a")), Some(1));
        assert_eq!(idx.line_of(&p.index(0).key("upstream")), Some(6));
        assert_eq!(idx.line_of(&p.index(1).key("name")), Some(7));
        assert_eq!(idx.line_of(&p.index(1).key("upstream")), Some(8));
        // unknown child falls back to the parent
        assert_eq!(idx.line_of(&p.index(1).key("nope")), Some(7));
    }

    #[test]
    fn flow_sequences_and_maps() {
        let text = "x: [1, 2]\ny: {a: 1, b: [3]}\nz: 3\n";
        let idx = LineIndex::build(text);
        assert_eq!(idx.line_of(&KeyPath::root().key("z")), Some(3));
        assert_eq!(idx.line_of(&KeyPath::root().key("y").key("b")), Some(2));
    }
}
