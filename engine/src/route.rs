//! Path templates such as `/v1/models/{model}:predict`: matching and rendering.

use std::collections::BTreeMap;

/// A compiled path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
}

/// Parameters captured by a match.
pub type Params = BTreeMap<String, String>;

impl Template {
    /// Compiles a template; `{name}` captures one or more characters other than `/`.
    pub fn parse(src: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = src;
        while let Some(open) = rest.find('{') {
            let (lit, after) = rest.split_at(open);
            if !lit.is_empty() {
                parts.push(Part::Literal(lit.to_owned()));
            }
            let close = after.find('}').ok_or_else(|| format!("unclosed `{{` in `{src}`"))?;
            let name = after.get(1..close).unwrap_or_default();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad parameter name `{name}` in `{src}`"));
            }
            if matches!(parts.last(), Some(Part::Param(_))) {
                return Err(format!("two parameters without a literal between them in `{src}`"));
            }
            parts.push(Part::Param(name.to_owned()));
            rest = after.get(close + 1..).unwrap_or_default();
        }
        if rest.contains('}') {
            return Err(format!("stray `}}` in `{src}`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// The names of the template's parameters.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Param(n) => Some(n.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Matches a whole path.
    pub fn matches(&self, path: &str) -> Option<Params> {
        let mut params = Params::new();
        match_parts(&self.parts, path, &mut params).then_some(params)
    }

    /// Fills the template with `params` (unknown names render empty).
    pub fn render(&self, params: &Params) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Param(n) => out.push_str(params.get(n).map_or("", String::as_str)),
            }
        }
        out
    }
}

fn match_parts(parts: &[Part], path: &str, params: &mut Params) -> bool {
    match parts.split_first() {
        None => path.is_empty(),
        Some((Part::Literal(l), rest)) => path.strip_prefix(l.as_str()).is_some_and(|p| match_parts(rest, p, params)),
        Some((Part::Param(name), rest)) => {
            let limit = path.find('/').unwrap_or(path.len());
            // Shortest capture first, so a following literal such as `:predict` ends the parameter.
            for end in (1..=limit).filter(|&e| path.is_char_boundary(e)) {
                let (value, remainder) = path.split_at(end);
                if match_parts(rest, remainder, params) {
                    params.insert(name.clone(), value.to_owned());
                    return true;
                }
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_and_renders() {
        let t = Template::parse("/v1/models/{model}:predict").unwrap();
        let p = t.matches("/v1/models/demo:predict").unwrap();
        assert_eq!(p["model"], "demo");
        assert_eq!(t.render(&p), "/v1/models/demo:predict");
        assert!(t.matches("/v1/models/:predict").is_none());
        assert!(t.matches("/v1/models/a/b:predict").is_none());
        assert!(t.matches("/v1/models/demo:predictx").is_none());
        let t = Template::parse("/p/{project}/m/{model}").unwrap();
        let p = t.matches("/p/x/m/y").unwrap();
        assert_eq!((p["project"].as_str(), p["model"].as_str()), ("x", "y"));
        assert_eq!(t.params().collect::<Vec<_>>(), ["project", "model"]);
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in ["/a/{", "/a/{}", "/a/{x}{y}", "/a/}", "/a/{b-c}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
