//! `${VAR}` interpolation from the environment, and `${file:PATH}` from
//! files (how Kubernetes mounts secrets).
//!
//! Applies to the string values of `[source]`, `[target]` (properties
//! included), `[http]` and `[runtime]`; flow values (regexes, templates) are
//! taken literally. `$${X}` is an escape and stays the literal text `${X}`.
//! An unset variable or an unreadable file is an error naming it; the value
//! itself is never shown. A file's value has its trailing newlines trimmed,
//! and a property that takes a value from a file is masked like a secret,
//! whatever its name. A relative path is taken from the working directory.

use super::Config;

/// Reads a variable from the process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The prefix of a file reference: `${file:PATH}`.
const FILE_PREFIX: &str = "file:";

/// Reads a secret file: its content without trailing newlines.
fn read_secret_file(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("`${file:}` names no file: write `${file:/path/to/secret}`".into());
    }
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(s) => Ok(s.trim_end_matches(['\n', '\r']).to_string()),
            Err(_) => Err(format!(
                "file `{path}` (from `${{file:{path}}}`) is not UTF-8 text"
            )),
        },
        Err(e) => Err(format!(
            "file `{path}` (from `${{file:{path}}}`) cannot be read: {e}"
        )),
    }
}

/// Expands `${VAR}` and `${file:PATH}` in `s`. Returns every problem found
/// in the string.
pub fn interpolate(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    expand(s, lookup).map(|(v, _)| v)
}

/// Like [`interpolate`]; also says whether a value came from a file.
fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(String, bool), Vec<String>> {
    let mut out = String::with_capacity(s.len());
    let mut errs = Vec::new();
    let mut from_file = false;
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(esc) = after.strip_prefix("$${") {
            // Escaped: `$${X}` -> `${X}` taken literally.
            out.push_str("${");
            rest = esc;
            continue;
        }
        if let Some(body) = after.strip_prefix("${") {
            match body.find('}') {
                Some(end) => {
                    let name = &body[..end];
                    if let Some(path) = name.strip_prefix(FILE_PREFIX) {
                        from_file = true;
                        match read_secret_file(path.trim()) {
                            Ok(v) => out.push_str(&v),
                            Err(e) => errs.push(e),
                        }
                        rest = &body[end + 1..];
                        continue;
                    }
                    let valid = !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && !name.starts_with(|c: char| c.is_ascii_digit());
                    if !valid {
                        errs.push(format!(
                            "`${{{name}}}` is not a valid environment variable reference (letters, digits and _ only, or `${{file:PATH}}`; write `$${{` for a literal `${{`)"
                        ));
                    } else {
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => errs.push(format!("environment variable `{name}` is not set")),
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    errs.push(
                        "unterminated `${`: expected `}` (write `$${` for a literal `${`)"
                            .to_string(),
                    );
                    rest = "";
                }
            }
            continue;
        }
        out.push('$');
        rest = &after[1..];
    }
    out.push_str(rest);
    if errs.is_empty() {
        Ok((out, from_file))
    } else {
        Err(errs)
    }
}

/// Expands `${VAR}` and `${file:PATH}` in every interpolated field of a
/// parsed config; properties that took a value from a file are marked
/// secret (see [`super::is_secret_key`]).
pub fn interpolate_config(
    c: &mut Config,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    let mut fix = |s: &mut String| -> bool {
        match expand(s, lookup) {
            Ok((v, from_file)) => {
                *s = v;
                from_file
            }
            Err(e) => {
                errs.extend(e);
                false
            }
        }
    };
    for cl in [&mut c.source, &mut c.target] {
        fix(&mut cl.alias);
        fix(&mut cl.bootstrap_servers);
        for (k, v) in cl.properties.0.iter_mut() {
            if fix(v) {
                super::mark_secret_key(k);
            }
        }
    }
    fix(&mut c.http.listen);
    fix(&mut c.runtime.group_instance_id);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PW" => Some("s3cret".into()),
            "HOST" => Some("h1".into()),
            _ => None,
        }
    }

    #[test]
    fn set_variables_are_expanded() {
        assert_eq!(interpolate("${HOST}:9092", &env).unwrap(), "h1:9092");
        assert_eq!(interpolate("a${PW}b${HOST}", &env).unwrap(), "as3cretbh1");
        assert_eq!(
            interpolate("no vars $ here", &env).unwrap(),
            "no vars $ here"
        );
    }

    #[test]
    fn unset_variable_is_named() {
        let e = interpolate("${NOPE}", &env).unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("`NOPE`"), "{e:?}");
    }

    #[test]
    fn escape_stays_literal() {
        assert_eq!(interpolate("$${PW}", &env).unwrap(), "${PW}");
        assert_eq!(interpolate("x$${NOPE}y", &env).unwrap(), "x${NOPE}y");
    }

    #[test]
    fn malformed_references() {
        assert!(interpolate("${oops", &env).is_err());
        assert!(interpolate("${a-b}", &env).is_err());
    }
}
