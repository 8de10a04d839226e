//! Run configuration files: `kiln train --config run.toml` reads the same keys as the flags
//! (`lora-rank = 16`, `lr = 2e-4`, `lora-targets = ["q", "v"]`, `train-on-prompt = true`;
//! `lora_rank` works too), and flags given on the command line win. The effective configuration
//! of a run — every flag's value, defaults included — is written back as TOML, so a run can be
//! repeated with `--config OUT/kiln-train.toml`.

use std::ffi::OsString;
use std::path::Path;

/// Keys that describe where a run is, not how it trains: never written to the effective file.
const NOT_REPEATED: [&str; 3] = ["config", "resume", "overwrite"];

/// `argv` with the keys of `--config FILE` (when the subcommand `sub` has one) inserted as flags
/// before the command line's own, so that those win (`sub` overrides repeated flags).
pub fn expand(argv: Vec<OsString>, sub: &clap::Command) -> Result<Vec<OsString>, String> {
    let Some(at) = argv.iter().position(|a| a == sub.get_name()) else {
        return Ok(argv);
    };
    let mut file = None;
    for (i, arg) in argv.iter().enumerate().skip(at + 1) {
        let text = arg.to_string_lossy();
        if text == "--config" {
            file = argv.get(i + 1).map(|f| f.to_string_lossy().to_string());
        } else if let Some(f) = text.strip_prefix("--config=") {
            file = Some(f.to_string());
        }
    }
    let Some(file) = file else {
        return Ok(argv);
    };
    let flags = flags_of(Path::new(&file), sub)?;
    let mut out = argv[..=at].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend(argv[at + 1..].iter().cloned());
    Ok(out)
}

/// The flags a config file stands for.
fn flags_of(path: &Path, sub: &clap::Command) -> Result<Vec<String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .filter(|_| long != "config")
            .ok_or_else(|| {
                format!(
                    "--config {}: unknown key `{key}` (the keys are the flags of `kiln {}` \
                     without their `--`)",
                    path.display(),
                    sub.get_name()
                )
            })?;
        let is_switch = !arg.get_action().takes_values();
        let bad = |what: &str| {
            format!(
                "--config {}: key `{key}`: expected {what}, found {value}",
                path.display()
            )
        };
        match &value {
            toml::Value::Boolean(b) if is_switch => {
                if *b {
                    flags.push(format!("--{long}"));
                }
            }
            _ if is_switch => return Err(bad("true or false")),
            toml::Value::String(s) => flags.push(format!("--{long}={s}")),
            toml::Value::Integer(n) => flags.push(format!("--{long}={n}")),
            toml::Value::Float(x) => flags.push(format!("--{long}={x:?}")),
            toml::Value::Boolean(b) => flags.push(format!("--{long}={b}")),
            toml::Value::Array(items) => {
                let items = items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s.clone()),
                        toml::Value::Integer(n) => Ok(n.to_string()),
                        _ => Err(bad("a list of strings")),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                flags.push(format!("--{long}={}", items.join(",")));
            }
            _ => return Err(bad("a string, number, boolean or list")),
        }
    }
    Ok(flags)
}

/// Every flag of `matches` (a parse of `sub`) with its value, defaults included, as TOML, under
/// a header naming the Kiln version and commit.
pub fn effective(sub: &clap::Command, matches: &clap::ArgMatches) -> String {
    let mut table = toml::Table::new();
    for arg in sub.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if NOT_REPEATED.contains(&long) || long == "help" {
            continue;
        }
        let Some(raw) = matches.get_raw(id) else {
            continue;
        };
        let values: Vec<String> = raw.map(|v| v.to_string_lossy().to_string()).collect();
        let value = if !arg.get_action().takes_values() {
            match values.first().map(String::as_str) {
                Some("true") => toml::Value::Boolean(true),
                _ => toml::Value::Boolean(false),
            }
        } else if arg.get_value_delimiter().is_some() {
            toml::Value::Array(values.into_iter().map(toml::Value::String).collect())
        } else {
            let v = values.into_iter().last().unwrap_or_default();
            if let Ok(n) = v.parse::<i64>() {
                toml::Value::Integer(n)
            } else if let Ok(x) = v.parse::<f64>().map_err(|_| ()).and_then(|x| {
                if x.is_finite() {
                    Ok(x)
                } else {
                    Err(())
                }
            }) {
                toml::Value::Float(x)
            } else {
                toml::Value::String(v)
            }
        };
        table.insert(long.to_string(), value);
    }
    format!(
        "# The effective configuration of this run (flags, config file and defaults), written by\n\
         # kiln {} (commit {}). Repeat it with: kiln {} --config THIS_FILE --out NEW_DIR\n{}",
        env!("CARGO_PKG_VERSION"),
        option_env!("KILN_COMMIT").unwrap_or("unknown"),
        sub.get_name(),
        toml::to_string(&table).unwrap_or_default()
    )
}
