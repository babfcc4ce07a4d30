//! The transform on the payload's JSON text: the values a pointer names are found by scanning the text, and
//! edits splice it. Nothing is parsed into a tree, so what the configuration does not touch reaches the backend
//! as the caller sent it (numbers digit for digit, key order, spacing).
//!
//! The tree path ([`Transform::transform_request`](crate::Transform)) is the reference. Where the two could disagree, this path declines
//! ([`Tree`]) and the caller runs the tree path instead: a key that occurs twice in an object a pointer walks
//! through or edits (a tree keeps the last), and nesting deeper than the tree parser accepts.

use crate::{Config, cannot_set, lacks, split, too_many, unescape};
use gatehouse_plugin_sdk::{JsonText, PluginError, TransformOutput, serde_json};
use std::borrow::Cow;
use std::ops::Range;

/// This path declines; the tree path decides.
#[derive(Debug, PartialEq, Eq)]
pub struct Tree;

/// Nesting beyond this is left to the tree path (whose parser refuses 128 levels).
const MAX_DEPTH: usize = 100;

/// What the transform makes of `body` (valid JSON text, as the host checked it), exactly as the tree path
/// would decide.
pub fn transform(cfg: &Config, body: &str) -> Result<Outcome, Tree> {
    if depth(body.as_bytes())? > MAX_DEPTH {
        return Err(Tree);
    }
    let s = body.as_bytes();
    // The root's members, shared by every path until an edit changes the text.
    let mut root = Root::default();
    for path in &cfg.require {
        if resolve(s, path, &mut root)?.is_none() {
            return Ok(Outcome::Refused(lacks(path)));
        }
    }
    for (path, max) in &cfg.max_items {
        if let Some(at) = resolve(s, path, &mut root)?
            && byte(s, at.start) == b'['
        {
            let len = elements(s, at.start)?.len();
            if len > *max {
                return Ok(Outcome::Refused(too_many(path, len, *max)));
            }
        }
    }
    let mut text: Option<String> = None;
    for path in &cfg.redact {
        let cur = text.as_deref().unwrap_or(body);
        if let Some(cut) = removal(cur.as_bytes(), path, &mut root)? {
            text.get_or_insert_with(|| body.to_owned()).replace_range(cut, "");
            root = Root::default();
        }
    }
    for (path, value) in &cfg.set {
        let cur = text.as_deref().unwrap_or(body);
        match setting(cur.as_bytes(), path, value, &mut root)? {
            Ok((at, insert)) => {
                text.get_or_insert_with(|| body.to_owned()).replace_range(at, &insert);
                root = Root::default();
            }
            Err(e) => return Ok(Outcome::Error(e)),
        }
    }
    Ok(text.map_or(Outcome::Unchanged, Outcome::Edited))
}

/// What the text path decides.
#[derive(Debug)]
pub enum Outcome {
    /// The body goes on as it came.
    Unchanged,
    /// The body goes on as edited.
    Edited(String),
    /// The payload is refused (400 or 413).
    Refused(TransformOutput<JsonText>),
    /// A configuration the body cannot satisfy.
    Error(PluginError),
}

/// The deepest nesting of arrays and objects in the text (one JSON value).
fn depth(s: &[u8]) -> Result<usize, Tree> {
    let start = ws(s, 0);
    if matches!(byte(s, start), b'{' | b'[') { container_end(s, start).map(|(_, depth)| depth) } else { Ok(0) }
}

/// `s[i]` opens an array or an object: the index after it, and its deepest nesting.
fn container_end(s: &[u8], i: usize) -> Result<(usize, usize), Tree> {
    let (mut d, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for (k, &b) in s.iter().enumerate().skip(i) {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                d += 1;
                max = max.max(d);
            }
            b'}' | b']' => {
                d = d.saturating_sub(1);
                if d == 0 {
                    return Ok((k + 1, max));
                }
            }
            _ => {}
        }
    }
    Err(Tree)
}

/// The byte at `i`, or 0 past the end.
fn byte(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

fn ws(s: &[u8], mut i: usize) -> usize {
    while matches!(s.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `s[i]` opens a string: the index after its closing quote.
fn string_end(s: &[u8], i: usize) -> Result<usize, Tree> {
    let mut j = i + 1;
    loop {
        match s.get(j) {
            Some(b'"') => return Ok(j + 1),
            Some(b'\\') => j += 2,
            Some(_) => j += 1,
            None => return Err(Tree),
        }
    }
}

/// `s[i]` starts a value: the index after it.
fn value_end(s: &[u8], i: usize) -> Result<usize, Tree> {
    match s.get(i) {
        Some(b'"') => string_end(s, i),
        Some(b'{' | b'[') => container_end(s, i).map(|(end, _)| end),
        Some(_) => {
            let mut j = i;
            while !matches!(s.get(j), None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')) {
                j += 1;
            }
            if j == i { Err(Tree) } else { Ok(j) }
        }
        None => Err(Tree),
    }
}

/// The members of the text's top-level object, once found.
#[derive(Default)]
struct Root(Option<Vec<Member>>);

/// The members of the object at `start`; the root's come from `root` (found on first use).
fn members_at<'r>(s: &[u8], start: usize, root: &'r mut Root) -> Result<Cow<'r, [Member]>, Tree> {
    if start != ws(s, 0) {
        return members(s, start).map(Cow::Owned);
    }
    if root.0.is_none() {
        root.0 = Some(members(s, start)?);
    }
    Ok(Cow::Borrowed(root.0.as_deref().unwrap_or_default()))
}

/// An object's member: its key (quotes included) and its value.
#[derive(Clone)]
struct Member {
    key: Range<usize>,
    value: Range<usize>,
}

/// The members of the object `s[i]` opens.
fn members(s: &[u8], i: usize) -> Result<Vec<Member>, Tree> {
    let mut out = Vec::new();
    let mut j = ws(s, i + 1);
    if s.get(j) == Some(&b'}') {
        return Ok(out);
    }
    loop {
        if s.get(j) != Some(&b'"') {
            return Err(Tree);
        }
        let key_end = string_end(s, j)?;
        let colon = ws(s, key_end);
        if s.get(colon) != Some(&b':') {
            return Err(Tree);
        }
        let start = ws(s, colon + 1);
        let end = value_end(s, start)?;
        out.push(Member { key: j..key_end, value: start..end });
        let next = ws(s, end);
        match s.get(next) {
            Some(b',') => j = ws(s, next + 1),
            Some(b'}') => return Ok(out),
            _ => return Err(Tree),
        }
    }
}

/// The elements of the array `s[i]` opens.
fn elements(s: &[u8], i: usize) -> Result<Vec<Range<usize>>, Tree> {
    let mut out = Vec::new();
    let mut j = ws(s, i + 1);
    if s.get(j) == Some(&b']') {
        return Ok(out);
    }
    loop {
        let end = value_end(s, j)?;
        out.push(j..end);
        let next = ws(s, end);
        match s.get(next) {
            Some(b',') => j = ws(s, next + 1),
            Some(b']') => return Ok(out),
            _ => return Err(Tree),
        }
    }
}

/// Whether the key text (quotes included) names `key`.
fn key_is(s: &[u8], key: &Range<usize>, name: &str) -> Result<bool, Tree> {
    let text = s.get(key.clone()).ok_or(Tree)?;
    if !text.contains(&b'\\') {
        return Ok(text.get(1..text.len().saturating_sub(1)) == Some(name.as_bytes()));
    }
    serde_json::from_slice::<String>(text).map(|k| k == name).map_err(|_| Tree)
}

/// The index of the member named `name`, if one is; a name that occurs twice declines.
fn find(s: &[u8], ms: &[Member], name: &str) -> Result<Option<usize>, Tree> {
    let mut found = None;
    for (i, m) in ms.iter().enumerate() {
        if key_is(s, &m.key, name)? {
            if found.is_some() {
                return Err(Tree);
            }
            found = Some(i);
        }
    }
    Ok(found)
}

/// An array index as `serde_json`'s pointers read it: no sign, no leading zero.
fn pointer_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

/// The span of the value the RFC 6901 pointer names, as `serde_json::Value::pointer` finds it.
fn resolve(s: &[u8], pointer: &str, root: &mut Root) -> Result<Option<Range<usize>>, Tree> {
    // The whole text is one value (the host checked it): no need to scan for its end.
    let mut end = s.len();
    while end > 0 && matches!(s.get(end - 1), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        end -= 1;
    }
    let mut at = ws(s, 0)..end;
    if at.is_empty() {
        return Err(Tree);
    }
    if pointer.is_empty() {
        return Ok(Some(at));
    }
    let Some(rest) = pointer.strip_prefix('/') else { return Ok(None) };
    for raw in rest.split('/') {
        let token = unescape(raw);
        at = match byte(s, at.start) {
            b'{' => {
                let ms = members_at(s, at.start, root)?;
                match find(s, &ms, &token)?.and_then(|i| ms.get(i)) {
                    Some(m) => m.value.clone(),
                    None => return Ok(None),
                }
            }
            b'[' => {
                match pointer_index(&token).and_then(|i| elements(s, at.start).map(|e| e.get(i).cloned()).transpose()) {
                    Some(span) => span?,
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
    }
    Ok(Some(at))
}

/// The text to cut so that item `k` of a list (of spans) goes with one separator.
fn cut(items: &[Range<usize>], k: usize) -> Option<Range<usize>> {
    let item = items.get(k)?;
    Some(match (k.checked_sub(1).and_then(|p| items.get(p)), items.get(k + 1)) {
        (Some(before), _) => before.end..item.end,
        (None, Some(after)) => item.start..after.start,
        (None, None) => item.clone(),
    })
}

/// The text to cut to redact `path`, if it names something.
fn removal(s: &[u8], path: &str, root: &mut Root) -> Result<Option<Range<usize>>, Tree> {
    let Some((parent, key)) = split(path) else { return Ok(None) };
    let Some(at) = resolve(s, parent, root)? else { return Ok(None) };
    match byte(s, at.start) {
        b'{' => {
            let ms = members_at(s, at.start, root)?;
            let Some(k) = find(s, &ms, &key)? else { return Ok(None) };
            let spans: Vec<Range<usize>> = ms.iter().map(|m| m.key.start..m.value.end).collect();
            Ok(cut(&spans, k))
        }
        b'[' => {
            let es = elements(s, at.start)?;
            Ok(key.parse::<usize>().ok().and_then(|i| cut(&es, i)))
        }
        _ => Ok(None),
    }
}

/// Where to write what to set `path` to `value`: a span to replace and its replacement.
fn setting(
    s: &[u8],
    path: &str,
    value: &serde_json::Value,
    root: &mut Root,
) -> Result<Result<(Range<usize>, String), PluginError>, Tree> {
    let Some((parent, key)) = split(path) else { return Ok(Err(cannot_set(path))) };
    let Some(at) = resolve(s, parent, root)?.filter(|at| byte(s, at.start) == b'{') else {
        return Ok(Err(cannot_set(path)));
    };
    let ms = members_at(s, at.start, root)?;
    let value = serde_json::to_string(value).map_err(|_| Tree)?;
    Ok(Ok(match find(s, &ms, &key)?.and_then(|k| ms.get(k)) {
        Some(m) => (m.value.clone(), value),
        None => {
            let key = serde_json::to_string(&key).map_err(|_| Tree)?;
            match ms.last() {
                Some(last) => (last.value.end..last.value.end, format!(",{key}:{value}")),
                None => (at.start + 1..at.start + 1, format!("{key}:{value}")),
            }
        }
    }))
}

#[cfg(test)]
#[allow(clippy::explicit_auto_deref)] // `*rng.pick(..)` picks the element type
mod tests {
    use super::*;
    use crate::Transform;
    use gatehouse_plugin_sdk::{Plugin, RawValue, TransformInput, TransformOutput, serde_json::Value};

    fn input<B>(body: B) -> TransformInput<B> {
        TransformInput { route: "r".into(), model: "m".into(), body }
    }

    /// xorshift64*: reproducible cases without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    const KEYS: &[&str] = &["a", "b", "instances", "user", "ssn", "x/y", "m~n", "~1", "0", "1", "", "é", "q\"t"];
    const SCALARS: &[&str] = &[
        "0",
        "-1",
        "12",
        "3.5",
        "1e3",
        "-0.25",
        "1.10",
        "12345678901234567890",
        "123456789012345678901234567",
        "\"s\"",
        "\"a\\\"b\"",
        "\"\\u00e9\\n\"",
        "\"{[,]}\"",
        "true",
        "false",
        "null",
    ];

    fn space(rng: &mut Rng) -> &'static str {
        *rng.pick(&["", "", "", " ", "\n  ", "\t"])
    }

    /// A key as JSON text, sometimes with needless escapes (which a comparison of raw bytes would miss).
    fn key_text(rng: &mut Rng, key: &str) -> String {
        if rng.below(4) > 0 {
            return serde_json::to_string(key).unwrap();
        }
        let mut out = String::from("\"");
        for c in key.chars() {
            match c {
                '"' => out.push_str("\\\""),
                c if rng.below(2) == 0 && (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn pointer_token(key: &str) -> String {
        key.replace('~', "~0").replace('/', "~1")
    }

    /// A JSON text; every path in it is pushed to `paths`. Objects get a repeated key now and then.
    fn value(rng: &mut Rng, depth: usize, path: &str, paths: &mut Vec<String>) -> String {
        paths.push(path.to_owned());
        let kind = if depth >= 4 { 2 } else { rng.below(3) };
        let mut out = String::new();
        match kind {
            0 => {
                out.push('{');
                let n = rng.below(5);
                let mut used: Vec<&str> = Vec::new();
                for i in 0..n {
                    let mut key = *rng.pick(KEYS);
                    while used.contains(&key) && rng.below(12) > 0 {
                        key = *rng.pick(KEYS);
                    }
                    used.push(key);
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(space(rng));
                    out.push_str(&key_text(rng, key));
                    out.push_str(space(rng));
                    out.push(':');
                    out.push_str(space(rng));
                    let child = format!("{path}/{}", pointer_token(key));
                    out.push_str(&value(rng, depth + 1, &child, paths));
                    out.push_str(space(rng));
                }
                out.push('}');
            }
            1 => {
                out.push('[');
                for i in 0..rng.below(5) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(space(rng));
                    out.push_str(&value(rng, depth + 1, &format!("{path}/{i}"), paths));
                    out.push_str(space(rng));
                }
                out.push(']');
            }
            _ => out.push_str(*rng.pick(SCALARS)),
        }
        out
    }

    fn pointer(rng: &mut Rng, paths: &[String]) -> String {
        const ODD: &[&str] =
            &["", "nope", "/", "/nope", "/a/0", "/instances/01", "/instances/+1", "/0/00", "/a~1b", "/~", "/a/b/c"];
        if rng.below(4) > 0 { rng.pick(paths).clone() } else { (*rng.pick(ODD)).to_owned() }
    }

    fn config(rng: &mut Rng, paths: &[String]) -> Config {
        let mut cfg = Config::default();
        if rng.below(4) == 0 {
            cfg.require.push(pointer(rng, paths));
        }
        if rng.below(3) == 0 {
            cfg.max_items.insert(pointer(rng, paths), rng.below(4));
        }
        for _ in 0..rng.below(4) {
            cfg.redact.push(pointer(rng, paths));
        }
        for _ in 0..rng.below(3) {
            let v: Value = serde_json::from_str(*rng.pick(&["0.2", "\"x\"", "{\"k\":[1]}", "null", "[]"])).unwrap();
            cfg.set.insert(pointer(rng, paths), v);
        }
        cfg
    }

    /// The text path and the tree path agree on every generated case (bodies compared as parsed values), and
    /// the text path decides most cases itself.
    #[test]
    fn text_path_decides_as_the_tree_path() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut cases, mut by_text) = (0, 0);
        for _ in 0..20_000 {
            let mut paths = Vec::new();
            let body = value(&mut rng, 0, "", &mut paths);
            let cfg = config(&mut rng, &paths);
            let raw = RawValue::from_string(body.clone()).unwrap_or_else(|e| panic!("{body}: {e}"));
            let tree: Value = serde_json::from_str(&body).unwrap();
            let want = Transform::transform_request(&cfg, input(tree));
            let got = Transform::transform_request_text(&cfg, input(raw));
            let got = got.map(|o| match o {
                TransformOutput::Body(b) => TransformOutput::Body(serde_json::from_str::<Value>(&b.0).unwrap()),
                TransformOutput::Reject { reason, too_large } => TransformOutput::Reject { reason, too_large },
            });
            assert_eq!(got, want, "body {body}\nconfig {cfg:?}");
            cases += 1;
            if let Ok(decided) = transform(&cfg, &body) {
                by_text += 1;
                if let Outcome::Edited(edited) = decided {
                    assert!(RawValue::from_string(edited.clone()).is_ok(), "{body} -> {edited}");
                }
            }
        }
        assert!(by_text * 10 > cases * 8, "the text path decided only {by_text} of {cases} cases");
    }

    /// What the configuration does not touch reaches the backend as sent: digits, key order, spacing.
    #[test]
    fn untouched_text_is_kept() {
        let cfg: Config =
            serde_json::from_value(serde_json::json!({"redact": ["/user/ssn"], "max_items": {"/b": 1}})).unwrap();
        let body = r#"{"z": 12345678901234567890123, "b": [1.10], "user": {"ssn": "1", "name": "a"}}"#;
        assert_eq!(
            forwarded(transform(&cfg, body).unwrap()),
            Some(r#"{"z": 12345678901234567890123, "b": [1.10], "user": {"name": "a"}}"#.to_owned())
        );
        assert_eq!(forwarded(transform(&cfg, r#"{"a": 1e400}"#).unwrap()), None);
    }

    /// The text an outcome forwards: `None` for the body unchanged.
    fn forwarded(outcome: Outcome) -> Option<String> {
        match outcome {
            Outcome::Unchanged => None,
            Outcome::Edited(text) => Some(text),
            other => panic!("{other:?}"),
        }
    }

    /// A key twice on a path, or nesting beyond the limit, is left to the tree path.
    #[test]
    fn ambiguous_text_goes_to_the_tree() {
        let cfg: Config = serde_json::from_value(serde_json::json!({"redact": ["/user/ssn"]})).unwrap();
        assert_eq!(transform(&cfg, r#"{"user": {"ssn": "1", "ssn": "2"}}"#).unwrap_err(), Tree);
        assert_eq!(transform(&cfg, r#"{"user": {"ssn": "1"}, "user": {}}"#).unwrap_err(), Tree);
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(transform(&cfg, &deep).unwrap_err(), Tree);
        // Through the plugin both duplicates go, as the tree keeps only the last.
        let raw = RawValue::from_string(r#"{"user": {"ssn": "1", "ssn": "2", "n": 1}}"#.into()).unwrap();
        let out = Transform::transform_request_text(&cfg, input(raw));
        match out.unwrap() {
            TransformOutput::Body(b) => assert_eq!(&*b.0, r#"{"user":{"n":1}}"#),
            other => panic!("{other:?}"),
        }
    }
}
