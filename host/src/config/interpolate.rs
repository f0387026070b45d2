//! `${NAME}` and `${NAME:-default}` references in the config text, resolved
//! before parsing so they work in any value. `$$` is a literal `$`.
//!
//! Values are substituted into the text, never logged: secrets passed this way
//! stay out of logs and the admin API because only the parsed config is kept.

/// An unresolvable reference, with the 1-based line it is on.
#[derive(Debug)]
pub struct InterpolateError {
    /// 1-based line of the reference in the config text.
    pub line: usize,
    /// What is wrong with the reference (unset variable, unclosed `${`).
    pub message: String,
}

/// Where a value from the environment landed in the interpolated text:
/// errors about text there must not quote it (see `config::parse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Substitution {
    /// Byte range in the interpolated text.
    pub range: std::ops::Range<usize>,
    /// The variable's name (not secret; shown to say where a bad value came from).
    pub name: String,
}

/// Replaces every `${NAME}` / `${NAME:-default}` in `text` using `env`.
pub fn interpolate(text: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, InterpolateError> {
    interpolate_tracked(text, env).map(|(text, _)| text)
}

/// [`interpolate`], also returning where each environment value went
/// (defaults are config text, not tracked).
pub fn interpolate_tracked(text: &str, env: &impl Fn(&str) -> Option<String>) -> Result<(String, Vec<Substitution>), InterpolateError> {
    let mut substitutions = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut line = 1;
    while let Some(pos) = rest.find('$') {
        let (before, after) = rest.split_at(pos);
        line += before.matches('\n').count();
        out.push_str(before);
        if let Some(tail) = after.strip_prefix("$$") {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            // A reference ends on its own line: a `}` further down belongs
            // to something else (an inline table, say).
            let end = tail.find(['}', '\n']).filter(|&end| tail[end..].starts_with('}')).ok_or_else(|| InterpolateError {
                line,
                message: "`${` is not closed on this line: write `${NAME}` or `${NAME:-default}`, or `$${` for a literal `${`".into(),
            })?;
            let reference = &tail[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(InterpolateError {
                    line,
                    message: format!(
                        "`${{{reference}}}` is not a valid reference: write `${{NAME}}` or `${{NAME:-default}}`, where NAME has only letters, digits and `_`"
                    ),
                });
            }
            match (env(name), default) {
                (Some(value), _) => {
                    let start = out.len();
                    out.push_str(&value);
                    if !value.is_empty() {
                        substitutions.push(Substitution { range: start..out.len(), name: name.to_owned() });
                    }
                }
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(InterpolateError {
                        line,
                        message: format!(
                            "environment variable `{name}` is not set: set it, or write `${{{name}:-default}}` to fall back to a default"
                        ),
                    })
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok((out, substitutions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_owned())
    }

    #[test]
    fn substitutes_defaults_and_escapes() -> Result<(), InterpolateError> {
        assert_eq!(interpolate("a=${TOKEN}", &env)?, "a=s3cret");
        assert_eq!(interpolate("a=${MISSING:-x}", &env)?, "a=x");
        assert_eq!(interpolate("a=${MISSING:-}", &env)?, "a=");
        assert_eq!(interpolate("cost=$$5 $x", &env)?, "cost=$5 $x");
        Ok(())
    }

    #[test]
    fn substitutions_are_tracked_by_position() -> Result<(), InterpolateError> {
        let (text, subs) = interpolate_tracked("a=${TOKEN} b=${NOPE:-d} c=$${TOKEN}", &env)?;
        assert_eq!(text, "a=s3cret b=d c=${TOKEN}");
        assert_eq!(subs, vec![Substitution { range: 2..8, name: "TOKEN".into() }]);
        Ok(())
    }

    #[test]
    fn missing_variable_names_line_and_variable() {
        let err = interpolate("a=1\nb=2\nc=${NOPE}", &env).err();
        let err = err.map(|e| (e.line, e.message));
        assert_eq!(
            err,
            Some((3, "environment variable `NOPE` is not set: set it, or write `${NOPE:-default}` to fall back to a default".to_owned()))
        );
    }

    #[test]
    fn rejects_bad_references() {
        assert!(interpolate("${a b}", &env).is_err());
        assert!(interpolate("${TOKEN", &env).is_err());
        assert!(interpolate("${}", &env).is_err());
        // The `}` of a later line does not close a reference.
        let err = interpolate("a = \"${TOKEN\"\nb = { c = 1 }", &env).err();
        assert_eq!(err.map(|e| (e.line, e.message.starts_with("`${` is not closed"))), Some((1, true)));
    }
}
