//! The key/value table handed to `init`.

use std::fmt::Write as _;

/// The pipeline's `[pipelines.<name>.plugin.config]` table, as strings.
///
/// Values arrive as strings whatever their TOML type, so a plugin parses what
/// it needs itself and reports bad values from `init`, where a mistake stops
/// the load instead of failing events later.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The value of `key`, or an error naming the missing key that `init` can
    /// return as is.
    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("missing required config key `{key}`"))
    }

    /// All keys, in the order the host passed them.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(k, _)| k)
    }

    /// All entries, in the order the host passed them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Entries whose key starts with `prefix`, with the prefix stripped:
    /// for families of keys such as `route.<value>`.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.iter()
            .filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v)))
    }

    /// Fails on the first key not in `known`, so a misspelt option is an
    /// error at load time rather than a silently ignored setting.
    ///
    /// An entry ending in `*` accepts every key with that prefix
    /// (`"route.*"` accepts `route.orders`).
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), String> {
        let is_known = |key: &str| {
            known.iter().any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix),
                None => key == *pattern,
            })
        };
        let Some(unknown) = self.keys().find(|key| !is_known(key)) else {
            return Ok(());
        };
        let mut message = format!("unknown config key `{unknown}`");
        if known.is_empty() {
            message.push_str(" (this plugin takes no configuration)");
        } else {
            let _ = write!(message, " (expected one of: {})", known.join(", "));
        }
        Err(message)
    }
}

impl From<Vec<(String, String)>> for Config {
    fn from(entries: Vec<(String, String)>) -> Self {
        Config { entries }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Config {
            entries: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        pairs.iter().copied().collect()
    }

    #[test]
    fn get_and_require() {
        let c = config(&[("a", "1"), ("b", "2")]);
        assert_eq!(c.get("b"), Some("2"));
        assert_eq!(c.get("c"), None);
        assert_eq!(c.require("a"), Ok("1"));
        assert_eq!(
            c.require("c"),
            Err("missing required config key `c`".to_owned())
        );
    }

    #[test]
    fn keys_and_iter_keep_host_order() {
        let c = config(&[("z", "1"), ("a", "2")]);
        assert_eq!(c.keys().collect::<Vec<_>>(), ["z", "a"]);
        assert_eq!(c.iter().collect::<Vec<_>>(), [("z", "1"), ("a", "2")]);
    }

    #[test]
    fn with_prefix_strips_it() {
        let c = config(&[("route.a", "x"), ("default", "y"), ("route.b", "z")]);
        assert_eq!(
            c.with_prefix("route.").collect::<Vec<_>>(),
            [("a", "x"), ("b", "z")]
        );
    }

    #[test]
    fn deny_unknown_accepts_known_and_prefixed_keys() {
        let c = config(&[("header", "x"), ("set.a", "1")]);
        assert_eq!(c.deny_unknown(&["header", "set.*"]), Ok(()));
        assert_eq!(Config::default().deny_unknown(&[]), Ok(()));
    }

    #[test]
    fn deny_unknown_names_the_first_unknown_key() {
        let c = config(&[("header", "x"), ("colour", "red"), ("size", "1")]);
        assert_eq!(
            c.deny_unknown(&["header", "set.*"]),
            Err("unknown config key `colour` (expected one of: header, set.*)".to_owned())
        );
        assert_eq!(
            c.deny_unknown(&[]),
            Err("unknown config key `header` (this plugin takes no configuration)".to_owned())
        );
    }
}
