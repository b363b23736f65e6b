//! Finding the line of a field in a YAML document from its path (`ports[1].device`), so a
//! validation error found after deserialisation still names the line, as serde's own
//! errors do.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// Parses `ports[1].device` into steps.
pub fn parse_path(path: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part
            .split_once('[')
            .map(|(k, r)| (k, Some(r)))
            .unwrap_or((part, None));
        if !key.is_empty() {
            steps.push(Step::Key(key.to_string()));
        }
        if let Some(rest) = rest {
            for idx in rest.split('[') {
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    steps.push(Step::Index(i));
                }
            }
        }
    }
    steps
}

#[derive(Debug)]
enum Frame {
    Map {
        key: Option<String>,
        expecting_key: bool,
    },
    Seq {
        index: usize,
    },
}

struct Finder {
    target: Vec<Step>,
    stack: Vec<Frame>,
    /// Path of the node about to be read.
    found: Option<Marker>,
    /// Deepest prefix of the target matched so far, with its marker.
    best: (usize, Option<Marker>),
}

impl Finder {
    fn current_path(&self) -> Vec<Step> {
        self.stack
            .iter()
            .filter_map(|f| match f {
                Frame::Map {
                    key: Some(k),
                    expecting_key: false,
                } => Some(Step::Key(k.clone())),
                Frame::Seq { index } => Some(Step::Index(*index)),
                _ => None,
            })
            .collect()
    }

    fn note(&mut self, mark: Marker) {
        if self.found.is_some() {
            return;
        }
        let path = self.current_path();
        if path == self.target {
            self.found = Some(mark);
        } else if self.target.starts_with(&path) && path.len() >= self.best.0 {
            self.best = (path.len(), Some(mark));
        }
    }

    /// After a complete value: advance the parent.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, expecting_key }) => {
                *key = None;
                *expecting_key = true;
            }
            Some(Frame::Seq { index }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Finder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        // A scalar in key position is a key, not a value.
        if let Some(Frame::Map { key, expecting_key }) = self.stack.last_mut()
            && *expecting_key
        {
            match ev {
                Event::Scalar(s, ..) => {
                    *key = Some(s);
                    *expecting_key = false;
                    // The key's own position is where a person looks for the field.
                    self.note(mark);
                }
                Event::MappingEnd => {
                    self.stack.pop();
                    self.value_done();
                }
                _ => {}
            }
            return;
        }
        match ev {
            Event::MappingStart(..) => {
                self.note(mark);
                self.stack.push(Frame::Map {
                    key: None,
                    expecting_key: true,
                });
            }
            Event::SequenceStart(..) => {
                self.note(mark);
                self.stack.push(Frame::Seq { index: 0 });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.stack.pop();
                self.value_done();
            }
            Event::Scalar(..) | Event::Alias(..) => {
                self.note(mark);
                self.value_done();
            }
            _ => {}
        }
    }
}

/// The 1-based line of `path` in `text`; if the path does not exist (a missing field), the
/// line of its deepest existing ancestor.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let mut f = Finder {
        target: parse_path(path),
        stack: Vec::new(),
        found: None,
        best: (0, None),
    };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut f, false).ok()?;
    f.found.or(f.best.1).map(|m| m.line())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "workers:\n  cores: [0]\nports:\n  - name: biz\n    device: biz\n  - name: pod60\n    device: pod60\n    role: pod\nroutes:\n  - { dst: 0.0.0.0/0, via: 10.0.0.1, dev: biz }\n";

    #[test]
    fn finds_nested_fields() {
        assert_eq!(line_of(DOC, "ports[1].device"), Some(7));
        assert_eq!(line_of(DOC, "ports[0].name"), Some(4));
        assert_eq!(line_of(DOC, "ports[1].role"), Some(8));
        assert_eq!(line_of(DOC, "routes[0].via"), Some(10));
        assert_eq!(line_of(DOC, "workers.cores"), Some(2));
    }

    #[test]
    fn missing_field_points_at_its_parent() {
        assert_eq!(line_of(DOC, "ports[1].mtu"), Some(6));
    }

    #[test]
    fn paths_parse() {
        assert_eq!(
            parse_path("a[2].b"),
            vec![Step::Key("a".into()), Step::Index(2), Step::Key("b".into())]
        );
    }
}
