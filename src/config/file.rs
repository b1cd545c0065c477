//! The k3s-style configuration file: `/etc/skiff/config.yaml` (or `--config FILE` /
//! `SKIFF_CONFIG_FILE`) and its drop-ins `FILE.d/*.yaml`, turned into command-line flags.
//!
//! The rules are k3s's (`pkg/configfilearg`):
//! - Keys are long flag names without the dashes (`node-ip: 10.0.0.5`); a repeatable flag takes a
//!   list (or one value), the others one scalar, booleans a YAML `true`/`false`.
//! - The file's values become flags placed *before* the command line's, so clap applies one rule:
//!   a command-line flag overrides the file for single-value flags and adds to it for repeatable
//!   ones. A flag present in the file also overrides its `SKIFF_` variable, as in k3s, where
//!   environment variables are only the flags' defaults: command line > file > environment >
//!   default. (For a repeatable flag the file's list replaces the variable's.) k3s's
//!   documentation says command-line values replace a repeatable flag's list; its code (the file's
//!   flags ahead of the command line's, urfave/cli appending every occurrence) adds them, and
//!   skiff follows the code.
//! - Drop-ins (`*.yaml`, `*.yml`, any case) are read after the file in lexical order; a later
//!   value for a key replaces the earlier one, and `key+:` appends to it instead.
//! - Only the flags of the running subcommand are taken. A key that is a flag of another
//!   subcommand (`tls-san` while running `skiff agent`) is skipped, because one file serves every
//!   subcommand on a machine; any other key is an error naming key and file (k3s only warns, but a
//!   typo'd `node-ip` silently ignored gives a node the wrong address).
//!
//! Where skiff differs from k3s: `--config` wins over `SKIFF_CONFIG_FILE` (k3s lets the variable
//! win, the reverse of every other flag); an explicitly named file must exist even when it has
//! drop-ins; a list for a single-value flag, `+` on one, and a wrong-typed value are errors
//! instead of last-one-wins or a string conversion.
//!
//! [`locate`], [`file_flags`] and [`splice`] are pure (arguments and file contents in, arguments
//! out); [`read_sources`] is the only I/O and [`expand`] ties them together for `main`.

use clap::{Arg, ArgAction, Command};
use serde_yaml::Value;
use std::any::TypeId;
use std::ffi::{OsStr, OsString};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the file is when neither `--config` nor `SKIFF_CONFIG_FILE` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/skiff/config.yaml";
/// The environment variable naming the file.
pub const ENV: &str = "SKIFF_CONFIG_FILE";
/// The clap id of the `--config` argument (the field of `cli::ConfigFileArgs`); a subcommand
/// reads the file exactly when it has this argument.
const CONFIG_ARG: &str = "config";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FileError {
    /// The file named by `--config` or `SKIFF_CONFIG_FILE` does not exist.
    #[error("{path}: no such config file (named by --config or SKIFF_CONFIG_FILE); create it or correct the path")]
    Missing { path: String },
    /// The file or its drop-in directory exists but could not be read.
    #[error("cannot read config {path}: {reason}")]
    Read { path: String, reason: String },
    /// The file is not YAML.
    #[error("{path}: not valid YAML: {reason}")]
    Yaml { path: String, reason: String },
    /// The file is YAML but not a map at the top.
    #[error("{path}: expected a map of flag names to values (like \"node-ip: 10.0.0.5\"), found {found}")]
    NotAMap { path: String, found: String },
    /// A key that is not a string.
    #[error("{path}: keys must be flag names like \"node-ip\", found {found}")]
    BadKey { path: String, found: String },
    /// A key that is no flag of any subcommand that reads the file.
    #[error(
        "{path}: unknown key {key:?}{hint}; keys are the long flags of `{command} --help` without the leading dashes"
    )]
    UnknownKey { path: String, key: String, hint: String, command: String },
    /// `config:` inside a config file.
    #[error("{path}: \"config\" cannot be set in a config file; pass --config FILE or set SKIFF_CONFIG_FILE")]
    NestedConfig { path: String },
    /// `key+:` for a flag that takes one value.
    #[error("{path}: {key}+: only repeatable flags can be appended to, and --{key} takes one value; write \"{key}:\" to set it")]
    AppendToScalar { path: String, key: String },
    /// A value of the wrong YAML type (a list for a single-value flag, a string for a boolean, …).
    #[error("{path}: {key}: expected {expected}, found {found}")]
    WrongType { path: String, key: String, expected: String, found: String },
    /// A value of the right YAML type that the flag does not accept (`node-ip: 10.0.0.300`).
    #[error("{path}: {key}: {value:?} is not {expected} ({reason})")]
    BadValue { path: String, key: String, value: String, expected: String, reason: String },
}

/// One file's contents, in the order it is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// Which subcommand runs, where its flags start in the argument list, and which file it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// Subcommand names from the root, e.g. `["snapshot", "ls"]`.
    pub command: Vec<String>,
    /// Index in the arguments just after the last subcommand name: the file's flags go there.
    pub insert_at: usize,
    pub path: PathBuf,
    /// Named by `--config` or `SKIFF_CONFIG_FILE` (so it must exist), not the default.
    pub explicit: bool,
}

/// A key skipped because it is a flag of another subcommand.
#[derive(Debug, Clone, PartialEq)]
pub struct Ignored {
    pub key: String,
    pub path: PathBuf,
}

/// The flags the files amount to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileFlags {
    /// Flags of the root command (`--log`), placed before the subcommand so that the command
    /// line's, wherever they are, come later and win.
    pub global: Vec<String>,
    /// The subcommand's flags, placed right after its name.
    pub local: Vec<String>,
    pub ignored: Vec<Ignored>,
}

/// The arguments with the file's flags in place, and what `main` logs about them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expanded {
    pub args: Vec<OsString>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    pub ignored: Vec<Ignored>,
}

/// Reads the config file for the subcommand in `args` (if it reads one) and returns `args` with
/// the file's flags spliced in. `env` is the value of `SKIFF_CONFIG_FILE`.
pub fn expand(root: &Command, args: Vec<OsString>, env: Option<&OsStr>) -> Result<Expanded, FileError> {
    let Some(loc) = locate(root, &args, env) else {
        return Ok(Expanded { args, ..Expanded::default() });
    };
    let sources = read_sources(&loc.path, loc.explicit)?;
    let flags = file_flags(root, &loc.command, &sources)?;
    Ok(Expanded {
        args: splice(&args, &loc, &flags),
        files: sources.into_iter().map(|s| s.path).collect(),
        ignored: flags.ignored,
    })
}

fn is_help_or_version(s: &str) -> bool {
    matches!(s, "-h" | "--help" | "-V" | "--version")
}

/// The argument a `--long` or `-s` token names, in `cmd` or among the root's global arguments.
fn find_arg<'a>(root: &'a Command, cmd: &'a Command, token: &str) -> Option<&'a Arg> {
    let matches = |a: &&Arg| match token.strip_prefix("--") {
        Some(long) => a.get_long() == Some(long),
        None => token.len() == 2 && token.strip_prefix('-').and_then(|s| s.chars().next()) == a.get_short(),
    };
    cmd.get_arguments().find(matches).or_else(|| root.get_arguments().filter(|a| a.is_global_set()).find(matches))
}

fn reads_config(cmd: &Command) -> bool {
    cmd.get_arguments().any(|a| a.get_id() == CONFIG_ARG)
}

/// Finds the subcommand and its config file by scanning the raw arguments, as k3s does: clap
/// cannot parse them yet, because the file may hold required flags (`skiff agent`'s `--server`).
/// None when the subcommand reads no file, or for `--help`/`--version` (which must work even
/// with a broken file), or when the arguments are malformed (clap then says how).
pub fn locate(root: &Command, args: &[OsString], env: Option<&OsStr>) -> Option<Location> {
    let mut cmd = root;
    let mut command = Vec::new();
    let mut i = 1;
    // Down the subcommands, skipping the values of flags before them (`skiff --log debug server`).
    let insert_at = loop {
        let token = args.get(i)?.to_str()?;
        i += 1;
        if token == "--" || is_help_or_version(token) {
            return None;
        }
        if token.starts_with('-') {
            let takes_value =
                !token.contains('=') && find_arg(root, cmd, token).is_some_and(|a| a.get_action().takes_values());
            if takes_value {
                i += 1;
            }
            continue;
        }
        cmd = cmd.find_subcommand(token)?;
        command.push(token.to_string());
        if reads_config(cmd) {
            break i;
        }
        if !cmd.has_subcommands() {
            return None;
        }
    };
    // The subcommand's own flags: the last --config wins, as for any flag.
    let mut given: Option<OsString> = None;
    let mut j = insert_at;
    while let Some(arg) = args.get(j) {
        j += 1;
        let Some(token) = arg.to_str() else { continue };
        if token == "--" {
            break;
        }
        if is_help_or_version(token) {
            return None;
        }
        if token == "--config" || token == "-c" {
            given = Some(args.get(j)?.clone());
            j += 1;
        } else if let Some(v) = token.strip_prefix("--config=") {
            given = Some(v.into());
        } else if let Some(v) = token.strip_prefix("-c").filter(|_| !token.starts_with("--")) {
            given = Some(v.strip_prefix('=').unwrap_or(v).into());
        }
    }
    let (path, explicit) = match (given, env.filter(|e| !e.is_empty())) {
        (Some(p), _) => (PathBuf::from(p), true),
        (None, Some(e)) => (PathBuf::from(e), true),
        (None, None) => (PathBuf::from(DEFAULT_PATH), false),
    };
    Some(Location { command, insert_at, path, explicit })
}

/// `FILE.d`, the drop-in directory of `FILE`.
pub fn dropin_dir(path: &Path) -> PathBuf {
    let mut d = path.as_os_str().to_owned();
    d.push(".d");
    PathBuf::from(d)
}

fn is_yaml_name(name: &OsStr) -> bool {
    let name = name.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// Reads the file and its drop-ins, in the order they apply. A missing default file (or
/// drop-in directory) is no configuration; a missing explicit file is an error.
pub fn read_sources(path: &Path, explicit: bool) -> Result<Vec<Source>, FileError> {
    let read_err =
        |p: &Path, e: std::io::Error| FileError::Read { path: p.display().to_string(), reason: e.to_string() };
    let mut out = Vec::new();
    match std::fs::read_to_string(path) {
        Ok(text) => out.push(Source { path: path.to_path_buf(), text }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit => {
            return Err(FileError::Missing { path: path.display().to_string() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(read_err(path, e)),
    }
    let dir = dropin_dir(path);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(read_err(&dir, e)),
    };
    let mut dropins = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| read_err(&dir, e))?;
        if !is_yaml_name(&entry.file_name()) {
            continue;
        }
        let p = entry.path();
        // metadata() follows symlinks: a link to a file is a drop-in, a directory is not.
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => dropins.push(p),
            Ok(_) => {}
            Err(e) => return Err(read_err(&p, e)),
        }
    }
    // All in one directory, so this is the lexical order of the file names.
    dropins.sort();
    for p in dropins {
        let text = std::fs::read_to_string(&p).map_err(|e| read_err(&p, e))?;
        out.push(Source { path: p, text });
    }
    Ok(out)
}

/// What a flag takes, from its clap definition.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `ArgAction::SetTrue`: present or not (a `false` cannot be expressed, so emits nothing).
    Switch,
    /// A boolean taking an optional `=true|false`.
    Bool,
    /// One value.
    One,
    /// `ArgAction::Append`: a repeatable flag.
    List,
}

fn kind_of(arg: &Arg) -> Kind {
    let is_bool = arg.get_value_parser().type_id() == TypeId::of::<bool>();
    match arg.get_action() {
        ArgAction::Append => Kind::List,
        ArgAction::SetTrue => Kind::Switch,
        _ if is_bool => Kind::Bool,
        _ => Kind::One,
    }
}

/// What a value of this flag is, in words: (with an article, plural).
fn type_words(arg: &Arg) -> (&'static str, &'static str) {
    let t = arg.get_value_parser().type_id();
    if t == TypeId::of::<bool>() {
        ("a boolean (true or false, without quotes)", "booleans")
    } else if t == TypeId::of::<IpAddr>() {
        ("an IP address", "IP addresses")
    } else if t == TypeId::of::<u16>() {
        ("a whole number from 0 to 65535", "whole numbers from 0 to 65535")
    } else if t == TypeId::of::<usize>() || t == TypeId::of::<u32>() || t == TypeId::of::<u64>() {
        ("a whole number", "whole numbers")
    } else if t == TypeId::of::<Duration>() {
        ("a duration like 15s, 500ms or 1m", "durations")
    } else if t == TypeId::of::<PathBuf>() {
        ("a path", "paths")
    } else if t == TypeId::of::<String>() {
        ("a string", "strings")
    } else {
        ("a value", "values")
    }
}

fn expected(arg: &Arg) -> String {
    let (one, many) = type_words(arg);
    match kind_of(arg) {
        Kind::List => format!("a list of {many} (or {one})"),
        Kind::Switch | Kind::Bool | Kind::One => one.to_string(),
    }
}

/// A YAML value in words, for "found …".
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "no value".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a map".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// A scalar as flag text. Numbers are written back in YAML's canonical form (`6443`); strings
/// YAML would read as numbers in another form (`0x1F`) need quotes to keep theirs. A leading
/// zero keeps a scalar a string (`0644`), by YAML 1.2.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The flag values a YAML value gives, or what was found instead.
fn values_of(kind: Kind, v: &Value) -> Result<Vec<String>, String> {
    match (kind, v) {
        (Kind::Switch | Kind::Bool, Value::Bool(b)) => Ok(vec![b.to_string()]),
        (Kind::Switch | Kind::Bool, other) => Err(describe(other)),
        // An empty list entry (`tls-san:` with its items commented out) is an empty list.
        (Kind::List, Value::Null) => Ok(Vec::new()),
        (Kind::List, Value::Sequence(items)) => items
            .iter()
            .map(|item| scalar_text(item).ok_or_else(|| format!("a list holding {}", describe(item))))
            .collect(),
        // One value for a repeatable flag is a list of one, as in k3s (`tls-san: foo.local`).
        (Kind::List | Kind::One, other) => scalar_text(other).map(|s| vec![s]).ok_or_else(|| describe(other)),
    }
}

/// Checks one value with the flag's own clap value parser (through a one-argument command, as
/// clap offers no public way to call a parser alone), so the file accepts exactly what the
/// command line does and the error can name the file.
fn probe(arg: &Arg, value: &str) -> Result<(), String> {
    let mut p = Arg::new("value").long("value").action(ArgAction::Append).value_parser(arg.get_value_parser().clone());
    if let Some(d) = arg.get_value_delimiter() {
        p = p.value_delimiter(d);
    }
    let mut token = OsString::from("--value=");
    token.push(value);
    match Command::new("skiff").no_binary_name(true).arg(p).try_get_matches_from([token]) {
        Ok(_) => Ok(()),
        Err(e) => Err(match std::error::Error::source(&e) {
            Some(s) => s.to_string(),
            None => e.kind().as_str().unwrap_or("invalid value").to_string(),
        }),
    }
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(cur).min(row[j]) };
            prev = cur;
        }
    }
    row[b.len()]
}

fn hint(key: &str, keys: &[&str]) -> String {
    let bare = key.trim_start_matches('-');
    if bare != key && keys.contains(&bare) {
        return format!(" (write it without the dashes: \"{bare}\")");
    }
    keys.iter()
        .map(|k| (distance(bare, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean \"{k}\"?)"))
        .unwrap_or_default()
}

/// Every long flag of every subcommand that reads the file, for telling "another subcommand's
/// flag" from a typo.
fn all_config_keys<'a>(cmd: &'a Command, out: &mut Vec<&'a str>) {
    if reads_config(cmd) {
        out.extend(cmd.get_arguments().filter_map(|a| a.get_long()));
    }
    for sub in cmd.get_subcommands() {
        all_config_keys(sub, out);
    }
}

struct Merged<'a> {
    key: String,
    arg: &'a Arg,
    global: bool,
    values: Vec<String>,
}

/// Merges the files into the flags of the subcommand `command` (names from the root). Pure.
pub fn file_flags(root: &Command, command: &[String], sources: &[Source]) -> Result<FileFlags, FileError> {
    let mut cmd = root;
    for name in command {
        match cmd.find_subcommand(name) {
            Some(c) => cmd = c,
            // Only reachable through a Location not made by `locate`: nothing to apply.
            None => return Ok(FileFlags::default()),
        }
    }
    let local =
        cmd.get_arguments().filter(|a| a.get_id() != CONFIG_ARG).filter_map(|a| Some((a.get_long()?, a, false)));
    let global = root.get_arguments().filter(|a| a.is_global_set()).filter_map(|a| Some((a.get_long()?, a, true)));
    let flags: Vec<(&str, &Arg, bool)> = local.chain(global).collect();
    let keys: Vec<&str> = flags.iter().map(|(k, _, _)| *k).collect();
    let mut elsewhere = Vec::new();
    all_config_keys(root, &mut elsewhere);
    let command_name = format!("skiff {}", command.join(" "));

    let mut merged: Vec<Merged> = Vec::new();
    let mut ignored = Vec::new();
    for src in sources {
        let path = src.path.display().to_string();
        let doc: Value = serde_yaml::from_str(&src.text)
            .map_err(|e| FileError::Yaml { path: path.clone(), reason: e.to_string() })?;
        let map = match doc {
            // An empty file, or one of comments only.
            Value::Null => continue,
            Value::Mapping(m) => m,
            other => return Err(FileError::NotAMap { path, found: describe(&other) }),
        };
        for (k, v) in map {
            let raw = match k {
                Value::String(s) => s,
                other => return Err(FileError::BadKey { path, found: describe(&other) }),
            };
            let (name, append) = match raw.strip_suffix('+') {
                Some(n) => (n, true),
                None => (raw.as_str(), false),
            };
            if name == CONFIG_ARG {
                return Err(FileError::NestedConfig { path });
            }
            let Some(&(key, arg, global)) = flags.iter().find(|(k, _, _)| *k == name) else {
                if elsewhere.contains(&name) {
                    ignored.push(Ignored { key: name.to_string(), path: src.path.clone() });
                    continue;
                }
                return Err(FileError::UnknownKey {
                    path,
                    key: raw.clone(),
                    hint: hint(name, &keys),
                    command: command_name,
                });
            };
            let kind = kind_of(arg);
            if append && kind != Kind::List {
                return Err(FileError::AppendToScalar { path, key: key.to_string() });
            }
            let values = values_of(kind, &v).map_err(|found| FileError::WrongType {
                path: path.clone(),
                key: raw.clone(),
                expected: expected(arg),
                found,
            })?;
            if matches!(kind, Kind::One | Kind::List) {
                for value in &values {
                    probe(arg, value).map_err(|reason| FileError::BadValue {
                        path: path.clone(),
                        key: raw.clone(),
                        value: value.clone(),
                        expected: type_words(arg).0.to_string(),
                        reason,
                    })?;
                }
            }
            match merged.iter_mut().find(|m| m.key == key) {
                Some(m) if append => m.values.extend(values),
                Some(m) => m.values = values,
                None => merged.push(Merged { key: key.to_string(), arg, global, values }),
            }
        }
    }

    // In the order keys first appeared, as k3s does; each list item is one flag.
    let mut out = FileFlags { ignored, ..FileFlags::default() };
    for m in merged {
        let target = if m.global { &mut out.global } else { &mut out.local };
        match kind_of(m.arg) {
            Kind::Switch => {
                if m.values.iter().any(|v| v == "true") {
                    target.push(format!("--{}", m.key));
                }
            }
            _ => target.extend(m.values.iter().map(|v| format!("--{}={v}", m.key))),
        }
    }
    Ok(out)
}

/// `args` with the file's global flags after the program name and its subcommand flags after
/// the subcommand, so that every command-line flag comes later than the file's.
pub fn splice(args: &[OsString], loc: &Location, flags: &FileFlags) -> Vec<OsString> {
    let at = loc.insert_at.min(args.len());
    let mut out = Vec::with_capacity(args.len() + flags.global.len() + flags.local.len());
    out.extend(args.iter().take(1).cloned());
    out.extend(flags.global.iter().map(OsString::from));
    out.extend(args.iter().take(at).skip(1).cloned());
    out.extend(flags.local.iter().map(OsString::from));
    out.extend(args.iter().skip(at).cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command as Sub, ServerArgs, SnapshotCommand};
    use crate::config::{resolve_server, HostFacts};
    use clap::{CommandFactory, Parser};

    fn src(path: &str, text: &str) -> Source {
        Source { path: PathBuf::from(path), text: text.to_string() }
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// The arguments `skiff <args>` become with these files, as `main` would parse them.
    fn expanded(args: &[&str], sources: &[Source]) -> Result<Vec<OsString>, FileError> {
        let root = Cli::command();
        let args = os(args);
        let loc = locate(&root, &args, None).expect("a subcommand that reads the file");
        let flags = file_flags(&root, &loc.command, sources)?;
        Ok(splice(&args, &loc, &flags))
    }

    fn server_args(args: &[&str], sources: &[Source]) -> ServerArgs {
        let argv = expanded(args, sources).unwrap();
        match Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}")).command {
            Sub::Server(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn server_flags(text: &str) -> Result<FileFlags, FileError> {
        file_flags(&Cli::command(), &["server".to_string()], &[src("/etc/skiff/config.yaml", text)])
    }

    fn err(text: &str) -> FileError {
        server_flags(text).expect_err(text)
    }

    #[test]
    fn keys_are_long_flag_names_with_lists_for_repeatable_flags_and_yaml_booleans() {
        let file = "node-ip: 10.0.0.5\ntls-san: [a.example, b.example]\nnode-label: [\"k=v\"]\n\
                    disable-agent: true\nwrite-kubeconfig-mode: \"0644\"\nhttps-listen-port: 7443\n";
        let a = server_args(&["skiff", "server"], &[src("/etc/skiff/config.yaml", file)]);
        assert_eq!(a.node.node_ip, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(a.tls_san, vec!["a.example", "b.example"]);
        assert_eq!(a.node.node_labels, vec!["k=v"]);
        assert!(a.disable_agent);
        assert_eq!(a.https_listen_port, 7443);
        let host = HostFacts { hostname: "box".into(), first_ip: None };
        let c = resolve_server(&a, &host).unwrap();
        assert_eq!(c.write_kubeconfig_mode, 0o644);
        assert_eq!(c.listen.port(), 7443);
        assert_eq!(c.node.labels, vec![("k".to_string(), "v".to_string())]);
    }

    #[test]
    fn the_file_becomes_flags_in_the_order_its_keys_appear() {
        let f = server_flags("tls-san: [a, b]\nnode-ip: 10.0.0.5\ncluster-init: false\n").unwrap();
        assert_eq!(f.local, vec!["--tls-san=a", "--tls-san=b", "--node-ip=10.0.0.5", "--cluster-init=false"]);
        assert!(f.global.is_empty() && f.ignored.is_empty());
    }

    #[test]
    fn command_line_flags_override_single_values_and_add_to_repeatable_ones() {
        let file = src("/c.yaml", "node-ip: 10.0.0.5\nnode-name: from-file\nnode-label: [a=1]\ntls-san: x\n");
        let a = server_args(
            &["skiff", "server", "--node-ip", "10.0.0.9", "--node-label", "b=2", "--node-label=c=3"],
            std::slice::from_ref(&file),
        );
        assert_eq!(a.node.node_ip, Some("10.0.0.9".parse().unwrap()));
        assert_eq!(a.node.node_name.as_deref(), Some("from-file"));
        assert_eq!(a.node.node_labels, vec!["a=1", "b=2", "c=3"]);
        assert_eq!(a.tls_san, vec!["x"], "one value for a repeatable flag is a list of one");
    }

    #[test]
    fn a_false_in_the_file_is_a_flag_the_command_line_can_still_turn_on() {
        let file = [src("/c.yaml", "disable-agent: false\ncluster-reset: true\n")];
        let a = server_args(&["skiff", "server"], &file);
        assert!(!a.disable_agent && a.cluster_reset);
        let a = server_args(&["skiff", "server", "--disable-agent", "--cluster-reset=false"], &file);
        assert!(a.disable_agent && !a.cluster_reset);
    }

    #[test]
    fn booleans_take_an_optional_value_and_a_bare_one_before_another_flag_is_true() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Sub::Server(s)) => Ok((s.cluster_init, s.disable_agent, s.token)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.kind()),
        };
        assert_eq!(parse(&["skiff", "server", "--cluster-init", "--token", "t"]), Ok((true, false, Some("t".into()))));
        assert_eq!(parse(&["skiff", "server", "--cluster-init=false", "--disable-agent=yes"]), Ok((false, true, None)));
        assert_eq!(parse(&["skiff", "server", "--disable-agent", "--disable-agent=false"]), Ok((false, false, None)));
        assert!(parse(&["skiff", "server", "--disable-agent=maybe"]).is_err());
        assert!(parse(&["skiff", "server", "--disable-agent", "true"]).is_err(), "a value needs `=`");
    }

    #[test]
    fn drop_ins_apply_in_order_later_values_replace_and_plus_appends() {
        // The example of k3s's documentation ("Multiple Config Files").
        let sources = [
            src("/etc/skiff/config.yaml", "token: boop\nnode-label:\n  - foo=bar\n  - bar=baz\n"),
            src(
                "/etc/skiff/config.yaml.d/test1.yaml",
                "write-kubeconfig-mode: 600\nnode-taint:\n  - alice=bob:NoExecute\n",
            ),
            src(
                "/etc/skiff/config.yaml.d/test2.yaml",
                "write-kubeconfig-mode: 777\nnode-label:\n  - other=what\n  - foo=three\n\
                 node-taint+:\n  - charlie=delta:NoSchedule\n",
            ),
        ];
        let a = server_args(&["skiff", "server"], &sources);
        assert_eq!(a.token.as_deref(), Some("boop"));
        assert_eq!(a.write_kubeconfig_mode, "777");
        assert_eq!(a.node.node_labels, vec!["other=what", "foo=three"]);
        assert_eq!(a.node.node_taints, vec!["alice=bob:NoExecute", "charlie=delta:NoSchedule"]);
    }

    #[test]
    fn plus_without_an_earlier_value_sets_and_later_plain_keys_replace_the_accumulated_list() {
        let sources = [
            src("/a.yaml", "tls-san+: [a]\n"),
            src("/a.yaml.d/1.yaml", "tls-san+: b\n"),
            src("/a.yaml.d/2.yaml", "tls-san: [c]\ntls-san+: [d]\n"),
        ];
        assert_eq!(server_args(&["skiff", "server"], &sources).tls_san, vec!["c", "d"]);
        let cleared = [src("/a.yaml", "tls-san: [a]\n"), src("/a.yaml.d/1.yaml", "tls-san:\n")];
        assert!(server_args(&["skiff", "server"], &cleared).tls_san.is_empty(), "an empty entry clears the list");
    }

    #[test]
    fn numbers_and_strings_are_taken_as_written() {
        let a = server_args(
            &["skiff", "server"],
            &[src(
                "/c.yaml",
                "token: 012345\nwrite-kubeconfig-mode: 0640\nhttps-listen-port: \"6444\"\nsnapshot-retention: 3\n",
            )],
        );
        assert_eq!(a.token.as_deref(), Some("012345"), "a leading zero keeps a YAML scalar a string");
        assert_eq!(a.write_kubeconfig_mode, "0640");
        assert_eq!(a.https_listen_port, 6444);
        assert_eq!(a.snapshot_retention, 3);
    }

    #[test]
    fn unknown_keys_are_errors_naming_key_and_file_with_a_suggestion() {
        let e = err("nod-ip: 10.0.0.5\n");
        assert_eq!(
            e,
            FileError::UnknownKey {
                path: "/etc/skiff/config.yaml".into(),
                key: "nod-ip".into(),
                hint: " (did you mean \"node-ip\"?)".into(),
                command: "skiff server".into(),
            }
        );
        assert!(e
            .to_string()
            .starts_with("/etc/skiff/config.yaml: unknown key \"nod-ip\" (did you mean \"node-ip\"?)"));
        assert!(err("--node-ip: 1.2.3.4\n").to_string().contains("without the dashes: \"node-ip\""));
        assert!(err("node_ip: 1.2.3.4\n").to_string().contains("did you mean \"node-ip\""));
        assert!(matches!(err("node-ipp+: [a]\n"), FileError::UnknownKey { key, .. } if key == "node-ipp+"));
        assert!(matches!(err("help: true\n"), FileError::UnknownKey { hint, .. } if hint.is_empty()));
        assert!(matches!(err("1: x\n"), FileError::BadKey { found, .. } if found == "the number 1"));
        assert!(matches!(err("config: /other.yaml\n"), FileError::NestedConfig { .. }));
    }

    #[test]
    fn keys_of_another_subcommand_are_skipped_so_one_file_serves_them_all() {
        let root = Cli::command();
        let file = [src("/etc/skiff/config.yaml", "data-dir: /srv/skiff\ntls-san: [a]\nnode-ip: 10.0.0.5\n")];
        let f = file_flags(&root, &["snapshot".into(), "ls".into()], &file).unwrap();
        assert_eq!(f.local, vec!["--data-dir=/srv/skiff"]);
        let keys: Vec<&str> = f.ignored.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, vec!["tls-san", "node-ip"]);
        let f = file_flags(&root, &["agent".into()], &file).unwrap();
        assert_eq!(f.local, vec!["--data-dir=/srv/skiff", "--node-ip=10.0.0.5"]);
        assert_eq!(f.ignored, vec![Ignored { key: "tls-san".into(), path: "/etc/skiff/config.yaml".into() }]);
        let argv = expanded(&["skiff", "snapshot", "ls"], &file).unwrap();
        match Cli::try_parse_from(&argv).unwrap().command {
            Sub::Snapshot(SnapshotCommand::Ls { data_dir, .. }) => assert_eq!(data_dir, PathBuf::from("/srv/skiff")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_of_the_wrong_type_name_key_file_and_expected_type() {
        let wrong = |text: &str| match err(text) {
            FileError::WrongType { path, key, expected, found } => {
                assert_eq!(path, "/etc/skiff/config.yaml");
                (key, expected, found)
            }
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(wrong("node-ip: [10.0.0.5]\n"), ("node-ip".into(), "an IP address".into(), "a list".into()));
        assert_eq!(
            wrong("disable-agent: \"true\"\n"),
            ("disable-agent".into(), "a boolean (true or false, without quotes)".into(), "the string \"true\"".into())
        );
        assert_eq!(wrong("disable-agent: yes\n").2, "the string \"yes\"", "YAML 1.2: yes is a string");
        assert_eq!(
            wrong("tls-san: {a: b}\n"),
            ("tls-san".into(), "a list of strings (or a string)".into(), "a map".into())
        );
        assert_eq!(wrong("node-label+: [[a=b]]\n").2, "a list holding a list");
        assert_eq!(wrong("node-name: true\n").2, "the boolean true");
        assert_eq!(wrong("node-ip:\n").2, "no value");
        assert_eq!(
            err("node-ip: [a]\n").to_string(),
            "/etc/skiff/config.yaml: node-ip: expected an IP address, found a list"
        );
    }

    #[test]
    fn values_the_flag_refuses_are_errors_with_the_flags_own_reason() {
        let bad = |text: &str| match err(text) {
            FileError::BadValue { key, value, expected, reason, .. } => (key, value, expected, reason),
            other => panic!("{text}: {other:?}"),
        };
        let (key, value, expected, reason) = bad("node-ip: 10.0.0.300\n");
        assert_eq!((key.as_str(), value.as_str(), expected.as_str()), ("node-ip", "10.0.0.300", "an IP address"));
        assert_eq!(reason, "invalid IP address syntax");
        assert_eq!(bad("https-listen-port: 70000\n").2, "a whole number from 0 to 65535");
        assert_eq!(bad("kubelet-port: 1.5\n").1, "1.5");
        assert!(bad("horizontal-pod-autoscaler-sync-period: 15x\n").3.contains("the unit must be"));
        assert!(err("cluster-dns: nope\n")
            .to_string()
            .starts_with("/etc/skiff/config.yaml: cluster-dns: \"nope\" is not an IP address"));
    }

    #[test]
    fn plus_on_a_single_value_flag_is_an_error() {
        assert_eq!(
            err("node-ip+: 10.0.0.5\n"),
            FileError::AppendToScalar { path: "/etc/skiff/config.yaml".into(), key: "node-ip".into() }
        );
    }

    #[test]
    fn yaml_that_is_not_a_map_of_flags_is_an_error_and_an_empty_file_is_no_flags() {
        assert!(matches!(err("- node-ip\n- 10.0.0.5\n"), FileError::NotAMap { found, .. } if found == "a list"));
        assert!(
            matches!(err("node-ip 10.0.0.5\n"), FileError::NotAMap { found, .. } if found.starts_with("the string"))
        );
        assert!(matches!(err("42\n"), FileError::NotAMap { .. }));
        let yaml = err("tls-san: [a\n");
        assert!(
            matches!(&yaml, FileError::Yaml { path, reason } if path == "/etc/skiff/config.yaml" && reason.contains("line"))
        );
        assert!(
            matches!(err("node-ip: 1.1.1.1\nnode-ip: 2.2.2.2\n"), FileError::Yaml { reason, .. } if reason.contains("duplicate"))
        );
        assert!(matches!(err("a: 1\n---\nb: 2\n"), FileError::Yaml { .. }));
        assert_eq!(server_flags("").unwrap(), FileFlags::default());
        assert_eq!(server_flags("# all commented out\n# node-ip: 10.0.0.5\n").unwrap(), FileFlags::default());
    }

    #[test]
    fn the_error_names_the_drop_in_that_is_wrong() {
        let sources = [
            src("/etc/skiff/config.yaml", "node-ip: 10.0.0.5\n"),
            src("/etc/skiff/config.yaml.d/50-x.yaml", "nodeip: 1\n"),
        ];
        let e = file_flags(&Cli::command(), &["server".into()], &sources).unwrap_err();
        assert!(matches!(e, FileError::UnknownKey { path, .. } if path == "/etc/skiff/config.yaml.d/50-x.yaml"));
    }

    #[test]
    fn the_global_log_flag_goes_before_the_subcommand_so_the_command_line_still_wins() {
        let file = [src("/c.yaml", "log: skiff=debug\nnode-ip: 10.0.0.5\n")];
        let f = file_flags(&Cli::command(), &["server".into()], &file).unwrap();
        assert_eq!(
            (f.global, f.local),
            (vec!["--log=skiff=debug".to_string()], vec!["--node-ip=10.0.0.5".to_string()])
        );
        let log = |args: &[&str]| Cli::try_parse_from(expanded(args, &file).unwrap()).unwrap().log;
        assert_eq!(log(&["skiff", "server"]), "skiff=debug");
        assert_eq!(log(&["skiff", "--log", "warn", "server"]), "warn");
        assert_eq!(log(&["skiff", "server", "--log", "error"]), "error");
    }

    #[test]
    fn locate_finds_the_subcommand_and_the_file_it_reads() {
        let root = Cli::command();
        let at = |args: &[&str], env: Option<&str>| locate(&root, &os(args), env.map(OsStr::new));
        let default = at(&["skiff", "server"], None).unwrap();
        assert_eq!(default.command, vec!["server"]);
        assert_eq!(
            (default.insert_at, default.path.clone(), default.explicit),
            (2, PathBuf::from(DEFAULT_PATH), false)
        );
        let l = at(&["skiff", "--log", "debug", "server", "--node-ip", "1.2.3.4", "-c", "/x.yaml"], None).unwrap();
        assert_eq!((l.insert_at, l.path, l.explicit), (4, PathBuf::from("/x.yaml"), true));
        assert_eq!(at(&["skiff", "agent", "--config=/a.yaml"], None).unwrap().path, PathBuf::from("/a.yaml"));
        assert_eq!(at(&["skiff", "agent", "-c/b.yaml"], None).unwrap().path, PathBuf::from("/b.yaml"));
        assert_eq!(at(&["skiff", "agent", "-c", "/1", "--config", "/2"], None).unwrap().path, PathBuf::from("/2"));
        let env = at(&["skiff", "server"], Some("/env.yaml")).unwrap();
        assert_eq!((env.path, env.explicit), (PathBuf::from("/env.yaml"), true));
        assert_eq!(at(&["skiff", "server", "-c", "/flag"], Some("/env")).unwrap().path, PathBuf::from("/flag"));
        assert!(!at(&["skiff", "server"], Some("")).unwrap().explicit, "an empty variable is no variable");
        let snap = at(&["skiff", "snapshot", "restore", "/snap", "--data-dir", "/d"], None).unwrap();
        assert_eq!((snap.command, snap.insert_at), (vec!["snapshot".to_string(), "restore".to_string()], 3));
        // Subcommands that read no file, help and version (which must work with a broken file),
        // and malformed arguments (clap reports those).
        for args in [
            &["skiff"][..],
            &["skiff", "snapshot"],
            &["skiff", "logger", "--path", "/p"],
            &["skiff", "help", "server"],
            &["skiff", "server", "--help"],
            &["skiff", "server", "-c", "/x", "-h"],
            &["skiff", "--version"],
            &["skiff", "server", "--config"],
            &["skiff", "nonsense"],
        ] {
            assert_eq!(at(args, None), None, "{args:?}");
        }
        assert_eq!(at(&["skiff", "server", "--", "-c", "/x"], None).unwrap().path, PathBuf::from(DEFAULT_PATH));
    }

    #[test]
    fn locate_reads_the_same_config_path_clap_parses() {
        let root = Cli::command();
        for args in [
            &["skiff", "server"][..],
            &["skiff", "server", "--config", "/a"],
            &["skiff", "server", "--config=/a", "-c", "/b"],
            &["skiff", "--log=debug", "agent", "--server", "https://s:6443", "--token", "t", "-c/c"],
            &["skiff", "snapshot", "save", "--name", "n", "-c=/d"],
            &["skiff", "snapshot", "ls", "--data-dir", "/x", "--config", "/e"],
        ] {
            let found = locate(&root, &os(args), None).unwrap().path;
            let parsed = match Cli::try_parse_from(args).unwrap().command {
                Sub::Server(a) => a.config.config,
                Sub::Agent(a) => a.config.config,
                Sub::Snapshot(SnapshotCommand::Save { config, .. } | SnapshotCommand::Ls { config, .. }) => {
                    config.config
                }
                other => panic!("{other:?}"),
            };
            assert_eq!(found, parsed, "{args:?}");
        }
    }

    #[test]
    fn every_flag_of_every_subcommand_that_reads_the_file_has_a_known_type() {
        // A new flag of a type this module cannot describe, or an action it cannot pass from a
        // file, fails here rather than with a vague message in a user's terminal.
        fn check(cmd: &Command) {
            if reads_config(cmd) {
                for a in cmd.get_arguments().filter(|a| a.get_long().is_some() && a.get_id() != CONFIG_ARG) {
                    assert_ne!(type_words(a).0, "a value", "--{:?}: describe its type in type_words", a.get_long());
                    assert!(
                        matches!(a.get_action(), ArgAction::Set | ArgAction::Append | ArgAction::SetTrue),
                        "--{:?}: {:?}",
                        a.get_long(),
                        a.get_action()
                    );
                }
            }
            cmd.get_subcommands().for_each(check);
        }
        check(&Cli::command());
    }

    #[test]
    fn read_sources_reads_the_file_then_yaml_drop_ins_in_lexical_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.yaml");
        let d = dropin_dir(&main);
        // A missing default file and drop-in directory are no configuration.
        assert_eq!(read_sources(&main, false).unwrap(), vec![]);
        assert!(matches!(read_sources(&main, true), Err(FileError::Missing { .. })));
        std::fs::create_dir_all(d.join("sub.yaml")).unwrap();
        for (name, text) in
            [("b.yaml", "b"), ("a.yml", "a"), ("10-x.YAML", "x"), ("notes.txt", "t"), ("c.yaml.bak", "c")]
        {
            std::fs::write(d.join(name), text).unwrap();
        }
        let names = |v: Vec<Source>| v.into_iter().map(|s| s.text).collect::<Vec<_>>();
        assert_eq!(names(read_sources(&main, false).unwrap()), vec!["x", "a", "b"], "drop-ins without the file");
        std::fs::write(&main, "main").unwrap();
        assert_eq!(names(read_sources(&main, true).unwrap()), vec!["main", "x", "a", "b"]);
        assert!(matches!(read_sources(dir.path(), true), Err(FileError::Read { .. })), "a directory is not a file");
    }
}
