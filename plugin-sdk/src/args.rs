//! The `policy_args` / `binder_args` a plugin receives in `init`.

use std::str::FromStr;

use crate::InitError;

/// A plugin's arguments from the configuration, as (key, value) strings in the order written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Args(Vec<(String, String)>);

impl Args {
    /// Wraps the list the host passed to `init`.
    pub fn new(args: Vec<(String, String)>) -> Args {
        Args(args)
    }

    /// The value of `key`, if given (the last one wins).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` parsed as `T`, `default` when absent; an unparsable value is an
    /// [`InitError::InvalidArgument`] naming the key and the value.
    pub fn parse_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, InitError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                InitError::InvalidArgument(format!(
                    "{key} = {v:?}: expected a {}",
                    std::any::type_name::<T>()
                ))
            }),
        }
    }

    /// Refuses any key not in `known` with [`InitError::UnknownArgument`], so typos do not pass silently.
    pub fn only(&self, known: &[&str]) -> Result<(), InitError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(InitError::UnknownArgument(k.clone())),
            None => Ok(()),
        }
    }

    /// All (key, value) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kv: &[(&str, &str)]) -> Args {
        Args::new(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// Values parse, defaults fill in, bad values and unknown keys are named in the error.
    #[test]
    fn parse_default_and_errors() {
        let a = args(&[("table_size", "251"), ("bad", "x")]);
        assert_eq!(a.parse_or("table_size", 65537u32), Ok(251));
        assert_eq!(a.parse_or("missing", 7u32), Ok(7));
        assert!(
            matches!(a.parse_or("bad", 1u32), Err(InitError::InvalidArgument(m)) if m.contains("bad"))
        );
        assert_eq!(
            a.only(&["table_size"]),
            Err(InitError::UnknownArgument("bad".into()))
        );
    }
}
