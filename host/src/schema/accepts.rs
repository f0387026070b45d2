//! The event versions a plugin declares it handles: the list its optional
//! `manifest.accepts` export returns, parsed once per loaded plugin version.
//!
//! Selectors: `type@version` (that version), `type@*` (any version of the
//! type, or none) and `*` (every event, typed or not).

use super::Kind;

/// A parsed accept list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepts {
    everything: bool,
    selectors: Vec<Selector>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    event_type: String,
    /// `None`: any version.
    version: Option<String>,
}

/// Most selectors a plugin may declare: a longer list is a bug, and each
/// event is compared against the list.
pub const MAX_SELECTORS: usize = 1000;

impl Accepts {
    /// Parses what `accepts` returned; the error names the bad selector.
    pub fn parse(list: &[String]) -> Result<Self, String> {
        if list.len() > MAX_SELECTORS {
            return Err(format!("{} selectors, more than the {MAX_SELECTORS} allowed", list.len()));
        }
        let mut accepts = Accepts { everything: false, selectors: Vec::with_capacity(list.len()) };
        for item in list {
            let item = item.trim();
            if item == "*" {
                accepts.everything = true;
                continue;
            }
            let bad = |why: &str| format!("{item:?} is not a selector ({why}); write `type@version`, `type@*` or `*`");
            let (event_type, version) = item.split_once('@').ok_or_else(|| bad("no `@`"))?;
            if event_type.is_empty() || event_type == "*" || version.is_empty() || version.contains('@') {
                return Err(bad("an empty or `*` type, or an empty version"));
            }
            let version = (version != "*").then(|| version.to_owned());
            accepts.selectors.push(Selector { event_type: event_type.to_owned(), version });
        }
        Ok(accepts)
    }

    /// Every selector, as declared (`*` first when present).
    pub fn selectors(&self) -> Vec<String> {
        let mut items: Vec<String> =
            self.selectors.iter().map(|s| format!("{}@{}", s.event_type, s.version.as_deref().unwrap_or("*"))).collect();
        if self.everything {
            items.insert(0, "*".into());
        }
        items
    }

    /// Whether the list has `*`: every event, so nothing to check.
    pub fn is_everything(&self) -> bool {
        self.everything
    }

    /// Whether an event of this kind (`None`: no type header) is accepted.
    pub fn covers(&self, kind: Option<&Kind<'_>>) -> bool {
        if self.everything {
            return true;
        }
        let Some(kind) = kind else { return false };
        self.selectors.iter().any(|s| s.event_type == kind.event_type && s.version.as_deref().is_none_or(|v| Some(v) == kind.version))
    }
}

impl std::fmt::Display for Accepts {
    /// The list as the plugin declared it (`nothing` when empty).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items = self.selectors();
        if items.is_empty() {
            return f.write_str("nothing");
        }
        // Bounded: a dead-letter message quotes it.
        let shown = items.len().min(20);
        let mut text = items[..shown].join(", ");
        if items.len() > shown {
            text.push_str(&format!(", and {} more", items.len() - shown));
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn kind<'a>(t: &'a str, v: Option<&'a str>) -> Kind<'a> {
        Kind { event_type: t, version: v }
    }

    #[test]
    fn exact_and_wildcard_versions() -> Result<(), String> {
        let accepts = Accepts::parse(&list(&["order-created@1", "order-created@2", "refund@*"]))?;
        assert!(accepts.covers(Some(&kind("order-created", Some("2")))));
        assert!(!accepts.covers(Some(&kind("order-created", Some("3")))));
        assert!(!accepts.covers(Some(&kind("order-created", None))));
        assert!(accepts.covers(Some(&kind("refund", Some("9")))));
        assert!(accepts.covers(Some(&kind("refund", None))));
        assert!(!accepts.covers(Some(&kind("other", Some("1")))));
        assert!(!accepts.covers(None), "untyped events are covered only by `*`");
        assert_eq!(accepts.to_string(), "order-created@1, order-created@2, refund@*");
        Ok(())
    }

    #[test]
    fn star_accepts_everything_and_empty_accepts_nothing() {
        let all = Accepts::parse(&list(&["*"])).ok();
        assert!(all.as_ref().is_some_and(|a| a.covers(None) && a.covers(Some(&kind("x", Some("1"))))));
        let none = Accepts::parse(&[]).ok();
        assert!(none.as_ref().is_some_and(|a| !a.covers(Some(&kind("x", Some("1")))) && a.to_string() == "nothing"));
    }

    #[test]
    fn bad_selectors_are_refused_with_the_selector() {
        for bad in ["order-created", "@1", "order@", "*@1", "a@b@c"] {
            let err = Accepts::parse(&list(&[bad])).err().unwrap_or_default();
            assert!(err.contains(&format!("{bad:?} is not a selector")), "{bad}: {err}");
        }
        let many: Vec<String> = (0..=MAX_SELECTORS).map(|i| format!("t@{i}")).collect();
        assert!(Accepts::parse(&many).is_err());
    }
}
