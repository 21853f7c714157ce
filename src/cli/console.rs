//! `orgsync serve`'s console settings (`ORGSYNC_CONSOLE=on` and friends).

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::console::{ConsoleConfig, SecureCookie};

/// Whether the console is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// When the console's session cookie carries `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SecureCookieArg {
    /// When the request came over TLS, i.e. a proxy in front sent `X-Forwarded-Proto: https`.
    Auto,
    /// Always (for a TLS proxy that does not send `X-Forwarded-Proto`).
    Always,
}

#[derive(Debug, Clone, Args)]
pub struct ConsoleArgs {
    /// Serve the operator console under /console on the admin listener (needs
    /// ORGSYNC_ADMIN_LISTEN; sign in with a token of `orgsync tokens create`).
    #[arg(long = "console", env = "ORGSYNC_CONSOLE", value_enum, default_value_t = Switch::Off)]
    pub console: Switch,
    /// When the console's session cookie is marked Secure.
    #[arg(long, env = "ORGSYNC_CONSOLE_SECURE_COOKIE", value_enum, default_value_t = SecureCookieArg::Auto)]
    pub console_secure_cookie: SecureCookieArg,
    /// How long a console sign-in lasts.
    #[arg(long, env = "ORGSYNC_CONSOLE_SESSION_TTL", default_value = "12h", value_parser = humantime::parse_duration)]
    pub console_session_ttl: Duration,
    /// The console's verdict (as `orgsync status`): a due job older than this needs a person.
    #[arg(long = "console-max-pending-age", env = "ORGSYNC_MAX_PENDING_AGE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_pending_age: Duration,
}

impl ConsoleArgs {
    /// The console's configuration, None when it is off.
    pub fn config(&self) -> Option<ConsoleConfig> {
        (self.console == Switch::On).then_some(ConsoleConfig {
            secure_cookie: match self.console_secure_cookie {
                SecureCookieArg::Auto => SecureCookie::Auto,
                SecureCookieArg::Always => SecureCookie::Always,
            },
            session_ttl: self.console_session_ttl,
            max_pending_age: self.max_pending_age,
        })
    }
}
