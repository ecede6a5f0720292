//! Passwords: where the client takes one from (the environment, a file, or the terminal with
//! echo off; never a flag, which `ps` would show), and a type that keeps it out of every
//! printout. It lives in memory only, to log in again after a reconnect.

use std::path::Path;

use zeroize::Zeroize;

/// The environment variable a script passes the password in.
pub const ENV: &str = "LINECHAT_PASSWORD";

/// A password. `Debug` hides it and there is no `Display`, so no log line or error message
/// can show it by accident; it is wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadPassword {
    #[error("the password is empty")]
    Empty,
    #[error("the password has a space in it (a password is one word)")]
    Space,
    #[error("the password has a control character in it")]
    Control,
}

impl Secret {
    /// A password as the protocol carries it: one word, no control characters. (How long it
    /// must be is the server's rule: it answers `WEAK_PASSWORD`.)
    pub fn new(text: String) -> Result<Secret, BadPassword> {
        let secret = Secret(text);
        if secret.0.is_empty() {
            return Err(BadPassword::Empty);
        }
        if secret.0.contains(' ') {
            return Err(BadPassword::Space);
        }
        if secret.0.chars().any(char::is_control) {
            return Err(BadPassword::Control);
        }
        Ok(secret)
    }

    /// The password itself, to put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Why no password could be read from where the user said it is.
#[derive(Debug, thiserror::Error)]
pub enum PasswordSource {
    #[error("--password-file {path}: {error}")]
    File { path: String, error: String },
    #[error("--password-file {path}: {error}")]
    BadInFile { path: String, error: BadPassword },
    #[error("{ENV}: {0}")]
    BadInEnv(BadPassword),
    #[error("{ENV} is set and so is --password-file: give the password one way")]
    Both,
}

/// The password from `--password-file` (its first line) or `LINECHAT_PASSWORD`, if either is
/// given. `env` is the variable's value (passed in, so that tests need not set it).
pub fn given(file: Option<&Path>, env: Option<String>) -> Result<Option<Secret>, PasswordSource> {
    let env = env.filter(|v| !v.is_empty());
    match (file, env) {
        (Some(_), Some(_)) => Err(PasswordSource::Both),
        (Some(path), None) => {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| PasswordSource::File {
                path: shown.clone(),
                error: e.to_string(),
            })?;
            let first = text.lines().next().unwrap_or_default().to_string();
            // Wipe the copy read whole; only the first line is kept (in a Secret).
            drop(Secret(text));
            Secret::new(first)
                .map(Some)
                .map_err(|error| PasswordSource::BadInFile { path: shown, error })
        }
        (None, Some(value)) => Secret::new(value)
            .map(Some)
            .map_err(PasswordSource::BadInEnv),
        (None, None) => Ok(None),
    }
}

/// Asks on the terminal with echo off. Empty input: `None`, the user gave up.
pub fn prompt(prompt: &str) -> std::io::Result<Option<Secret>> {
    loop {
        let typed = rpassword::prompt_password(prompt)?;
        if typed.is_empty() {
            return Ok(None);
        }
        match Secret::new(typed) {
            Ok(secret) => return Ok(Some(secret)),
            Err(e) => eprintln!("! {e}; try again (an empty line gives up)"),
        }
    }
}

/// Asks for a new password twice (with echo off) until both agree; `None` if the user gave up.
pub fn prompt_new(prompt: &str) -> std::io::Result<Option<Secret>> {
    loop {
        let Some(first) = self::prompt(prompt)? else {
            return Ok(None);
        };
        let Some(again) = self::prompt("The same again: ")? else {
            return Ok(None);
        };
        if first == again {
            return Ok(Some(first));
        }
        eprintln!("! the two did not match; again (an empty line gives up)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_one_printable_word_and_never_printed() {
        let s = Secret::new("correct-horse".into()).unwrap();
        assert_eq!(s.expose(), "correct-horse");
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret(..))");
        assert_eq!(Secret::new(String::new()), Err(BadPassword::Empty));
        assert_eq!(Secret::new("two words".into()), Err(BadPassword::Space));
        assert_eq!(Secret::new("tab\there".into()), Err(BadPassword::Control));
    }

    #[test]
    fn the_password_comes_from_the_file_or_the_environment() {
        let dir = std::env::temp_dir();
        let file = dir.join(format!("linechat-client-pw-{}", std::process::id()));
        std::fs::write(&file, "from-the-file\nignored\n").unwrap();
        let got = given(Some(&file), None).unwrap().unwrap();
        assert_eq!(got.expose(), "from-the-file");
        let got = given(None, Some("from-env".into())).unwrap().unwrap();
        assert_eq!(got.expose(), "from-env");
        assert!(given(None, None).unwrap().is_none());
        assert!(given(None, Some(String::new())).unwrap().is_none());
        assert!(matches!(
            given(Some(&file), Some("x".into())),
            Err(PasswordSource::Both)
        ));
        assert!(matches!(
            given(None, Some("a b".into())),
            Err(PasswordSource::BadInEnv(BadPassword::Space))
        ));
        std::fs::write(&file, "a b\n").unwrap();
        let err = given(Some(&file), None).unwrap_err();
        // The error says what is wrong without quoting the password.
        assert!(!err.to_string().contains("a b"), "{err}");
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(
            given(Some(&file), None),
            Err(PasswordSource::File { .. })
        ));
    }
}
