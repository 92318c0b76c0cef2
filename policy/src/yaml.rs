//! Bounded YAML parsing for the files users write: the controller's and the
//! proxy's discovery files, policy files and the controller's token file all
//! parse through here (serde-saphyr, the parser kube itself uses).
//!
//! A file is refused, with an error that says why, when it is larger than
//! [`MAX_FILE_BYTES`], nests deeper than [`MAX_DEPTH`] or expands (through
//! aliases) into more than [`MAX_NODES`] nodes or [`MAX_ALIAS_EVENTS`]
//! replayed events, so an alias bomb ("billion laughs") or a huge file costs
//! a bounded amount of memory instead of all of it. Errors name the line (and
//! column) first, then the field, as serde_yaml did:
//! `line 3 column 20: services[0].ports[0].port: invalid u16`.

use serde::de::DeserializeOwned;
use std::io::Read;
use std::path::Path;

/// The largest YAML file accepted (16 MiB: far above any discovery or policy
/// file of a real cluster, far below what would hurt a node).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// The deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// The most nodes (mappings, sequences and scalars, aliases expanded) one
/// file may produce.
pub const MAX_NODES: usize = 1_000_000;
/// The most events aliases may replay in one file (real files use few
/// aliases, if any; an alias bomb is all aliases).
pub const MAX_ALIAS_EVENTS: usize = 100_000;

/// A YAML file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// Not valid YAML, or not the expected shape.
    #[error("{}", located(.line, .column, .message))]
    Parse {
        /// 1-based line of the error, when known.
        line: Option<u64>,
        /// 1-based column of the error, when known.
        column: Option<u64>,
        /// What is wrong, without the position.
        message: String,
    },
    /// Over a limit: nesting, or nodes after alias expansion.
    #[error("{}", located(.line, .column, .message))]
    OverLimit {
        /// 1-based line of the error, when known.
        line: Option<u64>,
        /// 1-based column of the error, when known.
        column: Option<u64>,
        /// What is wrong, without the position.
        message: String,
    },
    /// Larger than the limit.
    #[error("larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
}

impl YamlError {
    /// The 1-based line the error is at, when known.
    pub fn line(&self) -> Option<u64> {
        match self {
            YamlError::Parse { line, .. } | YamlError::OverLimit { line, .. } => *line,
            YamlError::TooLarge { .. } => None,
        }
    }

    /// The message without the position.
    pub fn message(&self) -> String {
        match self {
            YamlError::Parse { message, .. } | YamlError::OverLimit { message, .. } => {
                message.clone()
            }
            YamlError::TooLarge { .. } => self.to_string(),
        }
    }
}

fn located(line: &Option<u64>, column: &Option<u64>, message: &str) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("line {l} column {c}: {message}"),
        (Some(l), None) => format!("line {l}: {message}"),
        _ => message.to_string(),
    }
}

fn options() -> serde_saphyr::Options {
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = MAX_ALIAS_EVENTS;
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: Some(MAX_FILE_BYTES as usize),
            max_depth: MAX_DEPTH,
            max_nodes: MAX_NODES,
            max_events: 2 * MAX_NODES,
            max_total_scalar_bytes: MAX_FILE_BYTES as usize,
        },
        alias_limits: alias_limits,
        // As serde_yaml: only `true` and `false` are booleans.
        strict_booleans: true,
        // Errors are one line; the caller names the file.
        with_snippet: false,
    }
}

/// Parses one YAML document of `text` (at most [`MAX_FILE_BYTES`]).
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(YamlError::TooLarge {
            limit: MAX_FILE_BYTES,
        });
    }
    // The field path first, as serde_yaml said it: `services[0].ports[0].port: ...`.
    let mut path = String::new();
    serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    })
    .map_err(|e| {
        let mut e = parse_error(e);
        if let YamlError::Parse { message, .. } = &mut e
            && !path.is_empty()
            && path != "."
            && path != "?"
        {
            *message = format!("{path}: {message}");
        }
        e
    })
}

/// Checks that the YAML stream `text` stays within the limits, without
/// building anything, for callers that then parse it with a YAML library of
/// their own (inject keeps every field of a manifest, in order). Only a limit
/// is an error here; other mistakes are left to the caller's parser.
pub fn check_limits(text: &str) -> Result<(), YamlError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(YamlError::TooLarge {
            limit: MAX_FILE_BYTES,
        });
    }
    match serde_saphyr::from_str_multiple_with_options::<serde::de::IgnoredAny, Vec<_>>(
        text,
        options(),
    ) {
        Err(e) if over_limit(&e) => Err(parse_error(e)),
        _ => Ok(()),
    }
}

/// Whether the parser stopped at one of its limits (not at a mistake).
fn over_limit(mut e: &serde_saphyr::Error) -> bool {
    use serde_saphyr::Error as E;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = e {
        e = error;
    }
    matches!(
        e,
        E::Budget { .. }
            | E::AliasReplayLimitExceeded { .. }
            | E::AliasExpansionLimitExceeded { .. }
            | E::AliasReplayStackDepthExceeded { .. }
            | E::AliasReplayCounterOverflow { .. }
    )
}

/// Reads a file of at most `limit` bytes as UTF-8, without reading more than
/// one byte past the limit however large the file is; a larger file is an
/// `InvalidData` error saying so.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            YamlError::TooLarge { limit },
        ));
    }
    Ok(text)
}

/// Reads a YAML file of at most [`MAX_FILE_BYTES`] (see [`read_bounded`]).
pub fn read_file(path: &Path) -> std::io::Result<String> {
    read_bounded(path, MAX_FILE_BYTES)
}

fn parse_error(e: serde_saphyr::Error) -> YamlError {
    let location = e.location();
    let line = location.as_ref().map(|l| l.line()).filter(|l| *l > 0);
    let column = location.as_ref().map(|l| l.column()).filter(|c| *c > 0);
    let mut message = e.without_snippet().to_string();
    // The library says "error: line L column C: ..."; keep the message only.
    if let Some(rest) = message.strip_prefix("error: ") {
        message = rest.to_string();
    }
    // ... and the position, which the error says up front in its own words.
    if let (Some(l), Some(c)) = (line, column) {
        if let Some(rest) = message.strip_prefix(&format!("line {l} column {c}: ")) {
            message = rest.to_string();
        }
        if let Some(rest) = message.strip_suffix(&format!(" at line {l}, column {c}")) {
            message = rest.to_string();
        }
    }
    let message = message.trim().to_string();
    if over_limit(&e) {
        YamlError::OverLimit {
            line,
            column,
            message,
        }
    } else {
        YamlError::Parse {
            line,
            column,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        #[serde(default)]
        items: Vec<String>,
        #[serde(default)]
        on: bool,
    }

    /// Anchors a list of `width` strings, then aliases it `copies` times:
    /// a small file that expands to `width * copies` strings.
    fn alias_bomb(width: usize, copies: usize) -> String {
        let mut s = String::from("- name: a\n  items: &a [");
        s.push_str(&vec!["\"lol\""; width].join(","));
        s.push_str("]\n");
        for i in 0..copies {
            s.push_str(&format!("- {{name: b{i}, items: *a}}\n"));
        }
        s
    }

    /// The classic nested form: each level aliases the one below 9 times.
    fn billion_laughs() -> String {
        let mut s = String::from("- &l0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        for l in 1..10 {
            let p = format!("*l{}", l - 1);
            s.push_str(&format!("- &l{l} [{}]\n", vec![p; 9].join(",")));
        }
        s
    }

    #[test]
    fn parses_and_names_the_line_of_errors() {
        let cases: &[(&str, Result<Doc, &str>)] = &[
            (
                "name: a\nitems: [x, y]\n",
                Ok(Doc {
                    name: "a".into(),
                    items: vec!["x".into(), "y".into()],
                    on: false,
                }),
            ),
            ("name: a\nbogus: 1\n", Err("line 2 column 1: bogus: unknown field `bogus`")),
            ("name: a\nitems: 3\n", Err("line 2 column 8: items: ")),
            ("name: a\nname: b\n", Err("line 2 column 1: duplicate")),
            ("name: a\n items: [\n", Err("line 2")),
            // As serde_yaml: `yes` is not a boolean.
            ("name: a\non: yes\n", Err("line 2 column 5:")),
        ];
        for (text, want) in cases {
            let got = from_str::<Doc>(text);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{text}"),
                (Err(w), Err(e)) => {
                    let e = e.to_string();
                    assert!(e.starts_with(w), "{text:?}: {e:?} does not start with {w:?}");
                    assert!(!e.contains('\n'), "one line: {e:?}");
                }
                _ => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn an_alias_bomb_is_refused_with_a_clear_error() {
        // 40 KB of text that would expand to 4 million strings (serde_yaml
        // 0.9 accepted it and built them all).
        type Parse = fn(&str) -> Result<(), YamlError>;
        let cases: [(&str, String, Parse); 2] = [
            ("quadratic", alias_bomb(2_000, 2_000), |t| {
                from_str::<Vec<Doc>>(t).map(drop)
            }),
            ("billion laughs", billion_laughs(), |t| {
                from_str::<serde::de::IgnoredAny>(t).map(drop)
            }),
        ];
        for (name, text, parse) in cases {
            assert!(text.len() < 100_000, "{name}: {} bytes", text.len());
            let started = std::time::Instant::now();
            let e = parse(&text).unwrap_err();
            assert!(started.elapsed().as_secs() < 5, "{name}: {:?}", started.elapsed());
            assert!(matches!(e, YamlError::OverLimit { .. }), "{name}: {e:?}");
            let e = e.to_string();
            assert!(e.contains("budget") || e.contains("alias"), "{name}: {e}");
            assert!(e.starts_with("line "), "{name}: {e}");
            let e = check_limits(&text).unwrap_err();
            assert!(matches!(e, YamlError::OverLimit { .. }), "{name}: {e:?}");
        }
        // Mistakes are the caller's parser's to report.
        check_limits("a: [\n").unwrap();
        check_limits("a: 1\n---\nb: *x\n").unwrap();
        // The same shape, small, is fine.
        let ok: Vec<Doc> = from_str(&alias_bomb(10, 10)).unwrap();
        assert_eq!(ok.len(), 11);
        assert_eq!(ok[10].items.len(), 10);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let e = from_str::<serde::de::IgnoredAny>(&text).unwrap_err();
        assert!(
            e.to_string().contains("depth") || e.to_string().contains("nesting"),
            "{e}"
        );
    }

    #[test]
    fn an_oversized_file_is_refused_without_reading_it_all() {
        let dir = std::env::temp_dir().join(format!("conduit-yaml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.yaml");
        // A sparse file far over the limit: reading it all would take 1 GiB.
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(1 << 30).unwrap();
        let e = read_file(&path).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), format!("larger than {MAX_FILE_BYTES} bytes"));
        // Exactly at a limit is fine.
        std::fs::write(&path, "name: a\n").unwrap();
        assert_eq!(read_bounded(&path, 8).unwrap(), "name: a\n");
        assert_eq!(read_bounded(&path, 7).unwrap_err().to_string(), "larger than 7 bytes");
        std::fs::remove_dir_all(&dir).unwrap();
        // Text already in memory is held to the same limit.
        let big = "#".repeat(MAX_FILE_BYTES as usize + 1);
        assert!(matches!(from_str::<Doc>(&big), Err(YamlError::TooLarge { .. })));
        assert!(matches!(check_limits(&big), Err(YamlError::TooLarge { .. })));
    }
}
