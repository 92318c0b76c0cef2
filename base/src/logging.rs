//! The one tracing set-up of the conduit binaries: the same filter rules,
//! the same formats, on stderr (stdout stays for the commands' output).
//!
//! * filter: `--log` (tracing `EnvFilter` syntax, e.g. `info` or
//!   `conduit_proxy=debug`) when given, else `RUST_LOG`, else `info`; a bad
//!   filter is an error naming it;
//! * format: `--log-format plain` (the default; colours only on a
//!   terminal) or `json` (one object per line).
//!
//! The controller and the agent flatten [`LogArgs`] into their command
//! line; the proxy has the same two flags among its `CONDUIT_PROXY_*`
//! settings (`CONDUIT_PROXY_LOG`, `CONDUIT_PROXY_LOG_FORMAT`, which the
//! injector sets). All call [`init`].

use anyhow::{Context, Result};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// `--log` and `--log-format`, for a binary's command line (global: they
/// may follow a subcommand).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or
    /// `conduit_controller=debug`; default: `RUST_LOG`, else `info`.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "plain")]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// [`init`] with these flags.
    pub fn init(&self) -> Result<()> {
        init(self.log.as_deref(), self.log_format)
    }
}

/// Where the filter comes from: `--log`, else `RUST_LOG`, else `info`.
pub fn filter_text(flag: Option<&str>, env: Option<&str>) -> (String, &'static str) {
    match (flag, env) {
        (Some(f), _) => (f.to_string(), "--log"),
        (None, Some(e)) => (e.to_string(), "RUST_LOG"),
        (None, None) => ("info".to_string(), "the default"),
    }
}

/// Installs the process's tracing subscriber (once, at start-up).
pub fn init(filter: Option<&str>, format: LogFormat) -> Result<()> {
    let env = std::env::var("RUST_LOG").ok();
    let (text, from) = filter_text(filter, env.as_deref());
    let filter = EnvFilter::try_new(&text)
        .with_context(|| format!("bad log filter {text:?} (from {from})"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_filter_comes_from_the_flag_then_rust_log_then_info() {
        // (--log, RUST_LOG, filter, named source)
        for (flag, env, want, from) in [
            (Some("debug"), Some("warn"), "debug", "--log"),
            (None, Some("warn"), "warn", "RUST_LOG"),
            (None, None, "info", "the default"),
        ] {
            assert_eq!(filter_text(flag, env), (want.to_string(), from));
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
        #[command(subcommand)]
        command: Option<Sub>,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Run,
    }

    #[test]
    fn the_flags_parse_before_and_after_a_subcommand() {
        let c =
            Cli::try_parse_from(["x", "run", "--log", "debug", "--log-format", "json"]).unwrap();
        assert_eq!(c.log.log.as_deref(), Some("debug"));
        assert_eq!(c.log.log_format, LogFormat::Json);
        let c = Cli::try_parse_from(["x", "--log-format", "plain"]).unwrap();
        assert_eq!(c.log.log_format, LogFormat::Plain);
        assert!(c.command.is_none());
        assert!(Cli::try_parse_from(["x", "--log-format", "xml"]).is_err());
    }
}
